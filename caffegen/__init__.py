"""caffegen: turn a pretrained BVLC Caffe model into a correct fine-tuning job and run it."""

__version__ = "0.1.0"
