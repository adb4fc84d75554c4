"""Where a compiled step's time goes on the CPU, by model layer.

XLA's CPU runtime runs a compiled program as a sequence of operations ("thunks"), each
recorded by JAX's profiler under its HLO instruction's name. ``profile_ops`` traces a
few runs and sums those durations per instruction; ``layer_labels`` names each
instruction after the Flax module that produced it (from the ``op_name`` metadata JAX
attaches), forward or backward, so that ``layer_times`` can total them per layer. A
fusion counts toward the layer of its root operation: a convolution's input gradient
fused with an upsampling's backward counts as the U-Net's own ("UNet itself").

Operations run concurrently where the program allows it, each on the same thread pool,
so per-layer times overlap and sum to more than the step's wall time: they show where
work goes, not what removing it would save.

A convolution XLA runs in its Eigen kernels (a ``convolution`` instruction of its own,
not inside a YNNPACK fusion; ``eigen_convolutions`` counts them) continues on XLA's thread
pool after its operation has returned: the profile records little more than its dispatch,
and its time is missing from the layer's (the conv U-Net's train step, whose
convolutions run there: ``ops.policy.CPU_EIGEN_CONVOLUTIONS``).
"""

import collections
import glob
import os
import re
import tempfile

import jax

OUTSIDE_MODEL = "(outside the model: input path, loss, optimizer)"
UNRECORDED = "(no op_name kept by XLA)"

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]*)$", re.M)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_RUNS = re.compile(r"\b(?:condition|body)=%?([\w.\-]+)")  # the computations a loop runs
_CONTROL_FLOW = re.compile(r"\swhile\(")
_TOP_MODULE = re.compile(r"jvp\(([A-Z]\w*)\)")  # the model's apply, differentiated
_MODULE = re.compile(r"^[A-Z]\w*_\d+$")  # a Flax submodule's name: ConvBlock_3, Conv_0


def op_name_label(op_name: str, depth: int) -> str:
    """``"ConvBlock_5/ConvBNAct_0 (backward)"`` for an ``op_name`` such as
    ``jit(train_step)/transpose(jvp(UNet))/ConvBlock_5/ConvBNAct_0/Conv_0/...``, with
    ``depth`` submodule names kept; ``"UNet itself (forward)"`` for the top module's
    own operations (between its submodules); ``OUTSIDE_MODEL`` where it names no module,
    ``UNRECORDED`` where it is empty."""
    if not op_name:
        return UNRECORDED
    top = _TOP_MODULE.search(op_name)
    if top is None:
        return OUTSIDE_MODEL
    modules = [part for part in op_name.split("/") if _MODULE.match(part)][:depth]
    direction = "backward" if "transpose(" in op_name else "forward"
    return f"{'/'.join(modules) or top.group(1) + ' itself'} ({direction})"


def layer_labels(hlo_text: str, depth: int = 1) -> dict:
    """Label (``op_name_label``) of each instruction the CPU runtime executes: those of the
    optimised HLO module's entry computation and of the computations its control flow
    runs (a loop's body: the train steps run in one), except the control-flow
    instructions themselves, whose time is their body's. An instruction's label comes from
    its own ``op_name``, else from that of the computation it calls (a fusion's root
    carries it). A ``call`` or ``conditional`` counts as a whole, under its own label."""
    computations = {name: body for name, body in _COMPUTATION.findall(hlo_text)}
    entry = re.search(r"^ENTRY [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    labels, pending, seen = {}, [entry.group(1)], set()
    while pending:
        for name, rest in _INSTRUCTION.findall(pending.pop()):
            for nested in _RUNS.findall(rest):
                if nested not in seen:
                    seen.add(nested)
                    pending.append(computations.get(nested, ""))
            if _CONTROL_FLOW.search(rest):
                continue
            op_name = _OP_NAME.search(rest)
            called = _CALLS.search(rest)
            if op_name is None and called is not None:
                op_name = _OP_NAME.search(computations.get(called.group(1), ""))
            labels[name] = op_name_label(op_name.group(1) if op_name else "", depth)
    return labels


def eigen_convolutions(hlo_text: str) -> int:
    """How many of the operations the CPU runtime executes (``layer_labels``' scope) are
    convolutions of their own, run by XLA's Eigen kernels."""
    executed = layer_labels(hlo_text)
    return sum(name in executed and rest.split("(")[0].endswith(" convolution")
               for name, rest in _INSTRUCTION.findall(hlo_text))


def profile_ops(run_once, runs: int, instructions) -> dict:
    """Seconds per run spent in each of ``instructions`` (names), over ``runs`` calls of
    ``run_once`` (which must block until its step is done) under JAX's profiler."""
    instructions = set(instructions)
    totals = collections.Counter()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(runs):
                run_once()
        finally:
            jax.profiler.stop_trace()
        (trace_file,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        profile = jax.profiler.ProfileData.from_file(trace_file)
        for plane in profile.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in instructions:
                        totals[event.name] += event.duration_ns
    return {name: ns / runs / 1e9 for name, ns in totals.items()}


def layer_times(compiled, run_once, runs: int, depth: int = 1) -> list:
    """``[(label, seconds per run)]``, largest first, of the CPU executable ``compiled``
    (run by ``run_once``), totalled per layer (``layer_labels``)."""
    labels = layer_labels(compiled.as_text(), depth)
    per_op = profile_ops(run_once, runs, labels)
    if not per_op:
        raise RuntimeError("the profile recorded none of the program's operations: is it "
                           "a CPU executable, and does run_once run it?")
    per_layer = collections.Counter()
    for name, seconds in per_op.items():
        per_layer[labels[name]] += seconds
    return per_layer.most_common()
