"""Eltwise and Power as ONNX nodes."""

PROD, SUM, MAX = 0, 1, 2  # caffe.EltwiseParameter.EltwiseOp


def eltwise(graph, io):
    """Caffe's Eltwise: a product, a maximum, or a sum with a coefficient per input."""
    layer = io.layer
    param = layer.eltwise_param
    if param.operation != SUM:
        graph.node("Mul" if param.operation == PROD else "Max", io.inputs, layer.name, io.outputs[:1])
        return
    coefficients = list(param.coeff) or [1.0] * len(io.inputs)
    terms = [value if coefficient == 1 else graph.node(
                 "Mul", [value, graph.constant(f"{layer.name}/coeff", coefficient)], layer.name)
             for value, coefficient in zip(io.inputs, coefficients)]
    graph.node("Sum", terms, layer.name, io.outputs[:1])


def power(graph, io):
    """Caffe's Power: (shift + scale · x) ^ power, each step only where it changes something."""
    layer = io.layer
    param = layer.power_param
    value = io.inputs[0]
    steps = [("Mul", param.scale, param.scale != 1), ("Add", param.shift, param.shift != 0),
             ("Pow", param.power, param.power != 1)]
    kept = [(op, operand) for op, operand, needed in steps if needed]
    if not kept:
        graph.copy(value, io.outputs[0], layer.name)
    for index, (op, operand) in enumerate(kept):
        last = index == len(kept) - 1
        value = graph.node(op, [value, graph.constant(f"{layer.name}/{op.lower()}", operand)], layer.name,
                           io.outputs[:1] if last else None)
