"""Export a chosen subnet as a checkpoint that runs without the supernet, on PyTorch, ONNX Runtime and LiteRT.

`export_model(model, spec, data, out_root, options)` writes `<out_root>/<spec key>/` from a static model (a
materialized subnet, or a compressed one); `export_subnet` materializes a supernet's subnet, recalibrates its
BatchNorm statistics and calls it:

- `spec.json`: the `SubnetSpec`: architecture (canonical string and JSON), space, how an image becomes the model's
  input (resolution, channels, mean, std, layout), provenance (supernet weights sha256, dataset, seed, BN
  recalibration and int8 calibration images, table ids, hwnas and torch versions), the compression plans
  (`prune_plan`, `bitwidth_plan`, null when there are none), the runtime models exported and every file's sha256.
- `model.safetensors`: the static model's weights (no pickle).
- `model.onnx`, `model.tflite` (fp32), `model-int8.onnx`, `model-fp16.tflite`, ...: conversions of that model
  (batch 1; TFLite models take channels-last input, as `latency_tables` converts; int8 models are calibrated on
  training images).
- `metrics.json`: validation accuracy (PyTorch), analytic costs, predicted latency per table, measured latency per
  runtime (median, IQR, protocol), predicted vs measured, the parity of each runtime model with PyTorch by its
  precision's criterion and, when a latency constraint is given, whether the subnet meets it by prediction and by
  measurement.

Everything is written into a hidden temporary directory beside the target, flushed, and renamed into place when
complete, so a failed export leaves no directory that looks finished. `load_subnet` rebuilds the model from
spec.json and model.safetensors alone. torch and the runtimes are imported only when needed: `import nas.export`
is cheap.

Modules, bottom up (each imports only `spec` and nothing sideways, but for `writer`, which uses them all): `spec`
(the spec, files, loading, errors), `parity`, `latency` (re-measurement and verdicts), `runtime_models` (which
runtime models, int8 calibration, conversion), `writer` (export_model, export_subnet, publishing); and `prune`
(torch, not imported here: a prune plan replayed on a model's weights).
"""

from nas.export.latency import (
    latency_verdict,
    meets_constraint_measured,
    remeasure,
    remeasure_like_table,
)
from nas.export.parity import PARITY, PARITY_TOLERANCE, ParityCriterion, check_parity, parity_failures
from nas.export.runtime_models import DEFAULT_RUNTIMES, EXPORT_PRECISIONS, calibration_inputs
from nas.export.spec import (
    METRICS_FILE,
    METRICS_FORMAT,
    SPEC_FILE,
    SPEC_FORMAT,
    WEIGHTS_FILE,
    ParityError,
    Progress,
    Provenance,
    SubnetError,
    SubnetSpec,
    load_subnet,
    model_file,
    read_metrics,
)
from nas.export.writer import ExportOptions, export_from_run, export_model, export_subnet

__all__ = [
    "DEFAULT_RUNTIMES", "EXPORT_PRECISIONS", "METRICS_FILE", "METRICS_FORMAT", "PARITY", "PARITY_TOLERANCE",
    "SPEC_FILE", "SPEC_FORMAT", "WEIGHTS_FILE",
    "ExportOptions", "ParityCriterion", "ParityError", "Progress", "Provenance", "SubnetError", "SubnetSpec",
    "calibration_inputs", "check_parity", "export_from_run", "export_model", "export_subnet", "latency_verdict",
    "load_subnet", "meets_constraint_measured", "model_file", "parity_failures", "read_metrics", "remeasure",
    "remeasure_like_table",
]
