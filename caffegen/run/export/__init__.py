"""Exporting a trained model: a bundle of the files another program needs, in each format asked for.

Every format is one :class:`~caffegen.run.export.formats.Exporter` of ``formats.FORMATS``: a writer
that puts its files into the bundle's folder and returns them by role (``caffe``: the deploy net
and weights; ``onnx``: model.onnx, checked against real Caffe). The bundle around them (labels,
preprocessing, info, README, a folder or a .tar.gz written beside and renamed in) is
:mod:`caffegen.run.export.bundle`. A new format is one module here and one entry in the table.
"""
