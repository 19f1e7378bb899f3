"""Reading and writing Caffe's files: prototxt, binary protobuf, models, upgrades."""

# pycaffe's caffe.io functions, so that ``brewnet.io`` works as ``caffe.io``.
from brewnet.io.transformer import (  # noqa: E402
    Transformer,
    array_to_blobproto,
    array_to_datum,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
    datum_to_array,
    load_image,
    oversample,
    resize_image,
)

__all__ = [
    "Transformer",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]
