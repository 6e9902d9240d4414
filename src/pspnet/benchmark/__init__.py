"""``pspnet benchmark``: every inference path of a pspnet model timed against fp32 eager, in one interleaved run.

One job per module:

- ``measure``: one timed call, peak memory (CUDA allocator or sampled RSS), GFLOP on the meta device,
  the matmul peak per number format, the machine's description.
- ``cases``: what is timed (``Case``): the PyTorch fast paths, ONNX Runtime fp32 and int8 of a model on
  the bundled sample frame; ``load_cases`` adds other libraries' models from a file outside pspnet.
- ``run``: ``BenchConfig`` and ``run_benchmark``: interleaved timing, correctness on CamVid val,
  training step, size/batch scaling, sliding window in a child process.
- ``report``: the table, the JSON file and the chart of a result.
"""

from pspnet.benchmark.cases import Case, load_cases
from pspnet.benchmark.report import format_table, plot, write_json
from pspnet.benchmark.run import BenchConfig, run_benchmark

__all__ = ["BenchConfig", "Case", "format_table", "load_cases", "plot", "run_benchmark", "write_json"]
