"""Facts and ranges every stage checks its input against, below every stage so all may import them.

The NMR views per object, the largest image side and seed any command accepts, and the most
processes one starts: config validation, the dataset reader, the sampler and the CLI ask here.
"""

# Views per object in NMR ShapeNet (24 azimuths, 15 degrees apart).
NUM_VIEWS = 24
# The image side every command accepts (NMR: 64 px); bounds zip members and allocations.
MAX_IMAGE_SIZE = 1024
# Seeds: numpy takes any int, torch an int64 (a larger one is an OverflowError deep in sampling).
MAX_SEED = 2**63 - 1
# Processes (loader workers, render workers) one command may start.
MAX_PROCESSES = 256
