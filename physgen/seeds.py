"""The seed streams episodes are drawn from, in one place, so that no two overlap by accident (episode seeds are
consecutive from a stream's first seed; `physgen.bench.protocol.make_protocol` checks the bench's against the
dataset's)."""

EVALUATION = 1_000_000  # evaluation episodes of `physgen bench`, PPO's evaluations and the benchmark scripts
REFERENCE_OFFSET = 1_000_003  # a dataset generated with seed s scores its reference policies from s + this
TUNING = 10_000  # `physgen train`'s evaluation and tuning runs, kept apart from the bench's episodes
