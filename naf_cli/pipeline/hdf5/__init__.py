"""The HDF5 feature store: the sink that writes shards (``sink``), the files of one output
and how they are named and read back (``layout``), the lock of one writer per part
(``lock``), joining the outputs of a split run (``merge``), and reading an output back to
describe it (``info``) or check it (``verify``). docs/format.md is the reference.

Nothing is imported here: import the module you need (``naf_cli.pipeline.HDF5FeatureSink``
is the sink)."""
