"""Trajectory datasets (Minari format): generation, loading, splits, windows, sequence chunks, normalizers."""

from physgen.data.generate import ensure_dataset, generate_dataset, reference_scores, with_reference_scores
from physgen.data.normalizer import Normalizer
from physgen.data.trajectories import (Dataset, Trajectories, dataset_id, datasets_root, load_dataset,
                                       normalized_score, select_episodes, split_episodes)
from physgen.data.windows import (SequenceBatch, WindowBatch, sample_sequences, sample_windows, sequence_starts,
                                  windows_at)

__all__ = ["Dataset", "Normalizer", "SequenceBatch", "Trajectories", "WindowBatch", "dataset_id", "datasets_root",
           "ensure_dataset", "generate_dataset", "load_dataset", "normalized_score", "reference_scores",
           "sample_sequences", "sample_windows", "select_episodes", "sequence_starts", "split_episodes", "windows_at",
           "with_reference_scores"]
