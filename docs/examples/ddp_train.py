"""A minimal DDP training script, one process per GPU, as torchrun starts it.

NCCL on GPUs; gloo on the CPU where CUDA is not there (how CI runs it, on fake GPUs).
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
local_rank = int(os.environ["LOCAL_RANK"])  # set by torchrun: 0 .. nproc-per-node - 1
device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)  # process N drives the N-th GPU of CUDA_VISIBLE_DEVICES

model = DistributedDataParallel(
    torch.nn.Linear(16, 1).to(device), device_ids=[local_rank] if cuda else None
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(50):
    x = torch.randn(64, 16, device=device)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
    optimizer.zero_grad()
    loss.backward()  # gradients are averaged over every process here
    optimizer.step()

if dist.get_rank() == 0:
    print(f"world_size={dist.get_world_size()} backend={dist.get_backend()} "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} loss={loss.item():.4f}")
dist.destroy_process_group()
