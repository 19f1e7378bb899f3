"""Reading and writing Caffe's files: prototxt, binary protobuf, models, upgrades."""
