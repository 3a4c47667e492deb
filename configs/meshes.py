"""Mesh presets: -1 takes the rest of the devices."""
DATA_PARALLEL = dict(data=-1, fsdp=1, tensor=1, expert=1)
FSDP = dict(data=1, fsdp=-1, tensor=1, expert=1)
FSDP_TENSOR4 = dict(data=1, fsdp=-1, tensor=4, expert=1)
