"""The net as a graph: views, layer facts, shape inference, and the surgery over it."""
