#!/usr/bin/env python3
"""Train model_6: ResNet50 transfer learning (backbone, global average pooling, softmax head).

[model_6] weights = "imagenet" (needs the download or Keras' cached file; stops at once with the
alternatives when neither is available), "none" (from scratch) or a local weights file.
Reads and writes as model_4.py, in models/model_6/.

The work is done by emotion_classifier.training.run_model_6.
"""

from emotion_classifier import cli, training

if __name__ == "__main__":
    raise SystemExit(cli.main(training.run_model_6, __doc__, section="model_6"))
