"""Continuous-time dynamic graphs: the event-stream type and DyGLib's chronological splits
(:mod:`.events`), the temporal neighbour sampler (:mod:`.sampler`), the evaluation negatives
(:mod:`.negatives`) and the offline datasets with their cards (:mod:`.datasets`)."""
from .datasets import TEMPORAL_DATASETS, is_event_csv, load_contacts, load_event_csv, load_movielens, load_temporal, load_uci
from .events import EventStream, TemporalSplit, chronological_split
from .negatives import SPLIT_SEEDS, STRATEGIES, mrr_negatives, sample_negatives, split_negatives
from .sampler import TemporalNeighborSampler, TemporalNeighbors

__all__ = ["EventStream", "TemporalSplit", "chronological_split", "TemporalNeighborSampler", "TemporalNeighbors",
           "STRATEGIES", "SPLIT_SEEDS", "sample_negatives", "split_negatives", "mrr_negatives",
           "TEMPORAL_DATASETS", "load_temporal", "load_uci", "load_contacts", "load_movielens", "load_event_csv",
           "is_event_csv"]
