"""Caffe's protobuf schema (caffe.proto) and its generated Python module.

``from brewnet.proto import caffe_pb2`` gives the message classes used for
.prototxt and .caffemodel files. Regenerate caffe_pb2.py with
``python tools/generate_proto.py`` after editing caffe.proto.
"""

from brewnet.proto import caffe_pb2

__all__ = ["caffe_pb2"]
