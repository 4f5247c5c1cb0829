"""Tests run on tiny data: one torch thread is much faster there than two busy ones."""
import torch

torch.set_num_threads(1)
