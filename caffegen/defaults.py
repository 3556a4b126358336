"""Fine-tuning defaults that several layers state: each has its one home here."""

# Learning rate of a fine-tuning job: a tenth of the usual from-scratch 0.01.
FINE_TUNE_LR = 0.001
# How much faster a new classifier learns than the pretrained layers (its bias twice that),
# as in BVLC's flickr-style fine-tuning example.
HEAD_LR_MULT = 10.0
# Passes over the training images.
EPOCHS = 10
# Cached features are extracted by one ``extract_features`` process per chunk of at most
# CHUNK_IMAGES images, in mini-batches (its peak memory depends on their size, not on the chunk's):
# of at most CACHE_BATCH images on the CPU and GPU_CACHE_BATCH on a GPU, fewer where memory is short.
# On the CPU a larger batch is no faster (Caffe's convolutions loop over its images) but its blobs
# outgrow the caches and take longer to fault in: ResNet-50 extracts fastest at 1 to 4 images with
# Caffe, OpenCV DNN at 2 or more.
CHUNK_IMAGES = 4096
CACHE_BATCH = 4
GPU_CACHE_BATCH = 64
# The mask value of pixels a segmentation loss and its metrics ignore (PASCAL VOC's borders).
IGNORE_LABEL = 255
# Images per forward pass of evaluate and predict.
FORWARD_BATCH = 16
