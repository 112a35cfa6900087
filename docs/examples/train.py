"""A stand-in for your training script: takes a learning rate, "trains", prints the loss.

    python train.py --lr=0.001 --batch-size=64

It prints which GPUs it was given (``CUDA_VISIBLE_DEVICES``) and, last, a line
``loss=<number>`` that the tutorial's ``parse_loss`` reads. Replace it with your
own; gpupool only starts it and reads its exit status.
"""

import argparse
import math
import os

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch-size", type=int, default=64)
args, _ = parser.parse_known_args()

print("GPUs:", os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"))
# Best near lr = 1e-3.5, a little better with bigger batches.
loss = (math.log10(args.lr) + 3.5) ** 2 + 10 / args.batch_size
print(f"loss={loss:.6f}")
