"""Running Caffe: finding and installing it, launching and watching runs, and what their logs say."""
