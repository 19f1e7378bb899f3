import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

# The suite runs in two worker processes on two cores (pytest -n 2). One torch thread
# per worker avoids oversubscription, which makes small gradchecks many times slower.
torch.set_num_threads(1)
