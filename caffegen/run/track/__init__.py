"""Runs shown in trackers (TensorBoard, MLflow), read from their run directories, never from the training process.

One idea a module: ``events`` reads a run's events from where a tracker last stopped, ``points``
turns them into metrics on one iteration axis, ``summary`` gathers a run's parameters, final
metrics and files, ``tracker`` is the interface and the table of trackers (one module each:
``tensorboard``, ``mlflow``), ``channel`` carries one run to one tracker and remembers how far it
got, ``watch`` follows runs as they train and ``replay`` sends what finished runs hold.
"""
