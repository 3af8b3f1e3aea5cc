"""deepbrain's brain-extraction 3-D U-Net (PyPI wheel deepbrain 0.1, `deepbrain/models/graph.pb`,
a TensorFlow 1 frozen graph) converted to ONNX, as a user of that model would: its `training`
placeholder fixed to False (dropout off), its `img` input given the shape the package feeds
(1 x 128 x 128 x 128 x 1, channels last), output `prob` (the sigmoid), tf2onnx at opset 13.
The wheel is fetched with `pip download` (not installed).

    python convert_deepbrain.py OUT.onnx       # in a venv with tensorflow-cpu and tf2onnx
"""
import collections
import glob
import subprocess
import sys
import tempfile
import zipfile

import tensorflow as tf
import tf2onnx

WHEEL = "deepbrain==0.1"
MEMBER = "deepbrain/models/graph.pb"


def main():
    out = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d, WHEEL],
                       check=True)
        with zipfile.ZipFile(glob.glob(f"{d}/*.whl")[0]) as z:
            pb = z.read(MEMBER)
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(pb)
    g = tf.Graph()
    with g.as_default():
        img = tf.compat.v1.placeholder(tf.float32, [1, 128, 128, 128, 1], name="img")
        tf.import_graph_def(gd, input_map={"img:0": img, "training:0": tf.constant(False)}, name="m")
        tf.identity(g.get_tensor_by_name("m/prob:0"), name="prob")
    sub = tf.compat.v1.graph_util.extract_sub_graph(g.as_graph_def(), ["prob"])
    model, _ = tf2onnx.convert.from_graph_def(sub, input_names=["img:0"], output_names=["prob:0"],
                                              opset=13, output_path=out)
    print(out, dict(collections.Counter(n.op_type for n in model.graph.node)))


if __name__ == "__main__":
    main()
