"""Data: media readers, frame sampling, preprocessing, conversation datasets and batches.

    readers     decord / PyAV / torchcodec / frame folders / images behind one interface
    sampling    N frames per clip: a random point in each segment (training) or its centre
    preprocess  resize, crop, normalise with torch ops, as each tower's reference processor does
    sources     the data config (YAML) and the llava / videochat2 annotation formats
    chat        conversations -> input_ids, labels (assistant turns only), placeholder runs
    dataset     samples -> Items, or Skipped records for unreadable media
    collate     Items -> the model's keyword arguments
    loader      the DataLoader and the skip accounting (SkipMonitor)
"""

from .chat import ChatEncoder, Encoded, TooLong
from .collate import Collator
from .dataset import ConversationDataset, Item, Skipped
from .errors import DataError, UnreadableSample
from .loader import SkipMonitor, build_loader
from .preprocess import Preprocessor
from .readers import available_readers, get_reader, read_image
from .sampling import sample_indices
from .sources import DataConfig, DatasetSpec, Sample, load_data_config, load_samples

__all__ = [
    "ChatEncoder", "Encoded", "TooLong", "Collator", "ConversationDataset", "Item", "Skipped", "DataError",
    "UnreadableSample", "SkipMonitor", "build_loader", "Preprocessor", "available_readers", "get_reader",
    "read_image", "sample_indices", "DataConfig", "DatasetSpec", "Sample", "load_data_config", "load_samples",
]
