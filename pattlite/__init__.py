"""PAtt-Lite replication: the authors' model as coded, a corrected model, data readers, training,
evaluation and the replication report. See README.md."""

__version__ = "0.1.0"
