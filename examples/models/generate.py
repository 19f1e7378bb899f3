"""Write the deploy prototxt files of this folder.

The architectures follow their published Caffe definitions (layer names, shapes and
settings); this script only saves typing the repeated blocks. Run it from anywhere:

    python examples/models/generate.py

and it rewrites the ``*.prototxt`` files next to it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


class NetWriter:
    """Collect prototxt layer blocks for one net."""

    def __init__(self, name: str, input_shape: tuple[int, ...], comment: str) -> None:
        self.blocks = [f"# {line}".rstrip() for line in comment.strip().splitlines()]
        self.blocks.append(f'name: "{name}"')
        dims = " ".join(f"dim: {d}" for d in input_shape)
        self.blocks.append(
            'layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
            f"  input_param {{ shape {{ {dims} }} }}\n}}"
        )

    def layer(self, name, kind, bottoms, tops, body: str = "") -> str:
        lines = ["layer {", f'  name: "{name}"', f'  type: "{kind}"']
        lines += [f'  bottom: "{b}"' for b in _as_list(bottoms)]
        lines += [f'  top: "{t}"' for t in _as_list(tops)]
        lines += [f"  {line}" for line in body.strip().splitlines() if line.strip()]
        lines.append("}")
        self.blocks.append("\n".join(lines))
        return _as_list(tops)[0]

    # -------------------------------------------------------------- building blocks
    def conv(self, name, bottom, num_output, kernel, stride=1, pad=0, group=1,
             bias=True, top=None) -> str:  # fmt: skip
        fields = [f"num_output: {num_output}"]
        if not bias:
            fields.append("bias_term: false")
        if pad:
            fields.append(f"pad: {pad}")
        fields.append(f"kernel_size: {kernel}")
        if stride != 1:
            fields.append(f"stride: {stride}")
        if group != 1:
            fields.append(f"group: {group}")
        body = "convolution_param {\n  " + "\n  ".join(fields) + "\n}"
        return self.layer(name, "Convolution", bottom, top or name, body)

    def relu(self, name, blob) -> str:
        return self.layer(name, "ReLU", blob, blob)

    def pool(self, name, bottom, method, kernel=0, stride=1, pad=0, global_pool=False):
        fields = [f"pool: {method}"]
        if global_pool:
            fields.append("global_pooling: true")
        else:
            fields.append(f"kernel_size: {kernel}")
            if stride != 1:
                fields.append(f"stride: {stride}")
        if pad:
            fields.append(f"pad: {pad}")
        body = "pooling_param {\n  " + "\n  ".join(fields) + "\n}"
        return self.layer(name, "Pooling", bottom, name, body)

    def lrn(self, name, bottom) -> str:
        body = "lrn_param {\n  local_size: 5\n  alpha: 0.0001\n  beta: 0.75\n}"
        return self.layer(name, "LRN", bottom, name, body)

    def fc(self, name, bottom, num_output) -> str:
        body = f"inner_product_param {{\n  num_output: {num_output}\n}}"
        return self.layer(name, "InnerProduct", bottom, name, body)

    def dropout(self, name, blob, ratio) -> str:
        return self.layer(
            name,
            "Dropout",
            blob,
            blob,
            f"dropout_param {{\n  dropout_ratio: {ratio}\n}}",
        )

    def concat(self, name, bottoms) -> str:
        return self.layer(name, "Concat", bottoms, name)

    def softmax(self, bottom) -> str:
        return self.layer("prob", "Softmax", bottom, "prob")

    def text(self) -> str:
        return "\n".join(self.blocks) + "\n"


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ============================================================================ nets
def alexnet() -> str:
    net = NetWriter(
        "AlexNet",
        (1, 3, 227, 227),
        """
AlexNet (Krizhevsky et al., 2012) as in BVLC's bvlc_alexnet deploy definition:
grouped convolutions (group 2 in conv2, conv4, conv5) and cross-channel LRN.
60,965,224 parameters; output "prob" is N x 1000.
""",
    )
    x = net.conv("conv1", "data", 96, 11, stride=4)
    net.relu("relu1", x)
    x = net.lrn("norm1", x)
    x = net.pool("pool1", x, "MAX", 3, 2)
    x = net.conv("conv2", x, 256, 5, pad=2, group=2)
    net.relu("relu2", x)
    x = net.lrn("norm2", x)
    x = net.pool("pool2", x, "MAX", 3, 2)
    x = net.conv("conv3", x, 384, 3, pad=1)
    net.relu("relu3", x)
    x = net.conv("conv4", x, 384, 3, pad=1, group=2)
    net.relu("relu4", x)
    x = net.conv("conv5", x, 256, 3, pad=1, group=2)
    net.relu("relu5", x)
    x = net.pool("pool5", x, "MAX", 3, 2)
    for index, size in ((6, 4096), (7, 4096)):
        x = net.fc(f"fc{index}", x, size)
        net.relu(f"relu{index}", x)
        net.dropout(f"drop{index}", x, 0.5)
    x = net.fc("fc8", x, 1000)
    net.softmax(x)
    return net.text()


def vgg16() -> str:
    net = NetWriter(
        "VGG_ILSVRC_16_layers",
        (1, 3, 224, 224),
        """
VGG-16 (Simonyan and Zisserman, 2014), configuration D, as in the authors' Caffe
deploy definition. 138,357,544 parameters; output "prob" is N x 1000.
""",
    )
    x = "data"
    for stage, (channels, repeats) in enumerate(
        ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), 1
    ):
        for index in range(1, repeats + 1):
            x = net.conv(f"conv{stage}_{index}", x, channels, 3, pad=1)
            net.relu(f"relu{stage}_{index}", x)
        x = net.pool(f"pool{stage}", x, "MAX", 2, 2)
    for index in (6, 7):
        x = net.fc(f"fc{index}", x, 4096)
        net.relu(f"relu{index}", x)
        net.dropout(f"drop{index}", x, 0.5)
    x = net.fc("fc8", x, 1000)
    net.softmax(x)
    return net.text()


def resnet50() -> str:
    net = NetWriter(
        "ResNet-50",
        (1, 3, 224, 224),
        """
ResNet-50 (He et al., 2015) as in the authors' Caffe deploy definition: convolutions
without bias, each followed by BatchNorm (global statistics) and Scale (with bias),
and Eltwise sums for the shortcuts. Stride 2 sits in the first 1x1 convolution of
stages 3 to 5. 25,557,032 learnable parameters (convolutions, Scale, fc1000); the
BatchNorm blobs add 53,173 stored statistics. Output "prob" is N x 1000.
""",
    )

    def conv_bn(name, bottom, num_output, kernel, stride=1, pad=0, relu=True) -> str:
        x = net.conv(
            name, bottom, num_output, kernel, stride=stride, pad=pad, bias=False
        )
        suffix = name[3:] if name.startswith("res") else "_" + name
        net.layer(
            f"bn{suffix}",
            "BatchNorm",
            x,
            x,
            "batch_norm_param {\n  use_global_stats: true\n}",
        )
        net.layer(
            f"scale{suffix}", "Scale", x, x, "scale_param {\n  bias_term: true\n}"
        )
        if relu:
            net.relu(f"{name}_relu", x)
        return x

    x = conv_bn("conv1", "data", 64, 7, stride=2, pad=3)
    x = net.pool("pool1", x, "MAX", 3, 2)
    stages = ((2, 64, 3), (3, 128, 4), (4, 256, 6), (5, 512, 3))
    for stage, width, blocks in stages:
        for index in range(blocks):
            block = f"res{stage}{chr(ord('a') + index)}"
            stride = 2 if index == 0 and stage > 2 else 1
            if index == 0:
                shortcut = conv_bn(
                    f"{block}_branch1", x, 4 * width, 1, stride=stride, relu=False
                )
            else:
                shortcut = x
            y = conv_bn(f"{block}_branch2a", x, width, 1, stride=stride)
            y = conv_bn(f"{block}_branch2b", y, width, 3, pad=1)
            y = conv_bn(f"{block}_branch2c", y, 4 * width, 1, relu=False)
            x = net.layer(block, "Eltwise", [shortcut, y], block)
            net.relu(f"{block}_relu", x)
    x = net.pool("pool5", x, "AVE", 7, 1)
    x = net.fc("fc1000", x, 1000)
    net.softmax(x)
    return net.text()


def googlenet() -> str:
    net = NetWriter(
        "GoogleNet",
        (1, 3, 224, 224),
        """
GoogLeNet (Szegedy et al., 2014) as in BVLC's bvlc_googlenet deploy definition:
nine inception modules joined by Concat, without the auxiliary classifiers.
6,998,552 parameters; output "prob" is N x 1000.
""",
    )
    x = net.conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3)
    net.relu("conv1/relu_7x7", x)
    x = net.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = net.lrn("pool1/norm1", x)
    x = net.conv("conv2/3x3_reduce", x, 64, 1)
    net.relu("conv2/relu_3x3_reduce", x)
    x = net.conv("conv2/3x3", x, 192, 3, pad=1)
    net.relu("conv2/relu_3x3", x)
    x = net.lrn("conv2/norm2", x)
    x = net.pool("pool2/3x3_s2", x, "MAX", 3, 2)
    modules = {
        "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
        "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
        "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
        "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
        "5b": (384, 192, 384, 48, 128, 128),
    }  # fmt: skip
    for key, sizes in modules.items():
        x = _inception(net, f"inception_{key}", x, sizes)
        if key in ("3b", "4e"):
            x = net.pool(f"pool{key[0]}/3x3_s2", x, "MAX", 3, 2)
    x = net.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    net.dropout("pool5/drop_7x7_s1", x, 0.4)
    x = net.fc("loss3/classifier", x, 1000)
    net.softmax(x)
    return net.text()


def _inception(net: NetWriter, name: str, bottom: str, sizes) -> str:
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = sizes
    a = net.conv(f"{name}/1x1", bottom, n1x1, 1)
    net.relu(f"{name}/relu_1x1", a)
    b = net.conv(f"{name}/3x3_reduce", bottom, n3x3_reduce, 1)
    net.relu(f"{name}/relu_3x3_reduce", b)
    b = net.conv(f"{name}/3x3", b, n3x3, 3, pad=1)
    net.relu(f"{name}/relu_3x3", b)
    c = net.conv(f"{name}/5x5_reduce", bottom, n5x5_reduce, 1)
    net.relu(f"{name}/relu_5x5_reduce", c)
    c = net.conv(f"{name}/5x5", c, n5x5, 5, pad=2)
    net.relu(f"{name}/relu_5x5", c)
    d = net.pool(f"{name}/pool", bottom, "MAX", 3, 1, pad=1)
    d = net.conv(f"{name}/pool_proj", d, pool_proj, 1)
    net.relu(f"{name}/relu_pool_proj", d)
    return net.concat(f"{name}/output", [a, b, c, d])


def squeezenet() -> str:
    net = NetWriter(
        "SqueezeNet_v1.1",
        (1, 3, 227, 227),
        """
SqueezeNet v1.1 (Iandola et al., 2016) as in DeepScale's deploy definition: fire
modules (1x1 squeeze, then 1x1 and 3x3 expand joined by Concat) and a final
convolution with global average pooling. 1,235,496 parameters; output "prob" is
N x 1000 x 1 x 1.
""",
    )
    x = net.conv("conv1", "data", 64, 3, stride=2)
    net.relu("relu_conv1", x)
    x = net.pool("pool1", x, "MAX", 3, 2)
    fires = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128), 6: (48, 192),
             7: (48, 192), 8: (64, 256), 9: (64, 256)}  # fmt: skip
    for index, (squeeze, expand) in fires.items():
        name = f"fire{index}"
        s = net.conv(f"{name}/squeeze1x1", x, squeeze, 1)
        net.relu(f"{name}/relu_squeeze1x1", s)
        a = net.conv(f"{name}/expand1x1", s, expand, 1)
        net.relu(f"{name}/relu_expand1x1", a)
        b = net.conv(f"{name}/expand3x3", s, expand, 3, pad=1)
        net.relu(f"{name}/relu_expand3x3", b)
        x = net.concat(f"{name}/concat", [a, b])
        if index in (3, 5):
            x = net.pool(f"pool{index}", x, "MAX", 3, 2)
    net.dropout("drop9", x, 0.5)
    x = net.conv("conv10", x, 1000, 1)
    net.relu("relu_conv10", x)
    x = net.pool("pool10", x, "AVE", global_pool=True)
    net.softmax(x)
    return net.text()


def fcn32s_small() -> str:
    net = NetWriter(
        "FCN-32s-small",
        (1, 3, 64, 64),
        """
A fully convolutional segmentation net in the style of FCN-32s (Long et al., 2015)
on a small three-stage backbone: the first convolution pads by 100, the classifier
is convolutional, a Deconvolution upsamples the 21-class scores 8 times and Crop
aligns them with the input (offset 95 follows from the layers' strides, kernels
and pads). 229,557 parameters; output "score" is N x 21 x H x W for an H x W input.
""",
    )
    x = net.conv("conv1", "data", 16, 3, pad=100)
    net.relu("relu1", x)
    x = net.pool("pool1", x, "MAX", 2, 2)
    x = net.conv("conv2", x, 32, 3, pad=1)
    net.relu("relu2", x)
    x = net.pool("pool2", x, "MAX", 2, 2)
    x = net.conv("conv3", x, 64, 3, pad=1)
    net.relu("relu3", x)
    x = net.pool("pool3", x, "MAX", 2, 2)
    x = net.conv("fc6", x, 128, 3)
    net.relu("relu6", x)
    net.dropout("drop6", x, 0.5)
    x = net.conv("fc7", x, 128, 1)
    net.relu("relu7", x)
    net.dropout("drop7", x, 0.5)
    x = net.conv("score_fr", x, 21, 1)
    body = (
        "param {\n  lr_mult: 0\n}\nconvolution_param {\n  num_output: 21\n"
        "  bias_term: false\n  kernel_size: 16\n  stride: 8\n"
        '  weight_filler {\n    type: "bilinear"\n  }\n}'
    )
    x = net.layer("upscore", "Deconvolution", x, "upscore", body)
    net.layer(
        "score",
        "Crop",
        [x, "data"],
        "score",
        "crop_param {\n  axis: 2\n  offset: 95\n}",
    )
    return net.text()


NETS = {
    "alexnet.prototxt": alexnet,
    "vgg16.prototxt": vgg16,
    "resnet50.prototxt": resnet50,
    "googlenet.prototxt": googlenet,
    "squeezenet_v1.1.prototxt": squeezenet,
    "fcn32s_small.prototxt": fcn32s_small,
}


def main() -> None:
    for filename, build in NETS.items():
        (HERE / filename).write_text(build(), encoding="utf-8")
        print(f"wrote {HERE / filename}")


if __name__ == "__main__":
    main()
