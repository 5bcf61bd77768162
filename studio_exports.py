"""The Deploy page's int8 exports: full-integer TFLite and quantized ONNX, each prepared in the background,
calibrated, checked in its own runtime against the float model, and offered with that check as a table (a
warning above it when int8 costs more than a point of accuracy)."""
from __future__ import annotations

from typing import Any

import streamlit as st

import studio_ui as ui
from fmnist_jax.deploy import quantize
from fmnist_jax.studio import tasks

LABELS = {"onnx": "ONNX int8", "tflite": "TensorFlow Lite int8"}


def report_rows(report: dict) -> list[dict]:
    """The check as table rows: int8 beside float."""
    def accuracy(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    return [{"file": "int8", "accuracy": accuracy(report["accuracy"]), "size": f"{report['bytes'] / 1024:,.0f} KB",
             "same answer as float": f"{report['agreement']:.2%}"},
            {"file": "float32", "accuracy": accuracy(report["float_accuracy"]),
             "size": f"{report['float_bytes'] / 1024:,.0f} KB", "same answer as float": "-"}]


def int8_exports(pid: str, model: Any, model_source: str, source: str, stamp: str, stem: str) -> None:
    st.markdown("**Smaller and faster: int8.** Weights and activations in 8 bits, about a quarter of the size; "
                "each file is checked against the float model before you download it.")
    for column, fmt in zip(st.columns(2), quantize.FORMATS[::-1]):
        with column:
            _one(pid, fmt, model, model_source, source, stamp, f"{stem}-int8.{fmt}")


def _one(pid: str, fmt: str, model: Any, model_source: str, source: str, stamp: str, file_name: str) -> None:
    kind, label = f"{fmt}-int8", LABELS[fmt]
    task = ui.background().find(ui.owner(), kind, f"{source}:{stamp}")
    if task and task["status"] == "done":
        payload, report = task["result"]
        if report.get("warning"):
            st.warning(report["warning"], icon=":material/warning:")
        st.download_button(f"Download {label}", payload, file_name=file_name, mime="application/octet-stream",
                           icon=":material/file_download:", key=f"{kind}-dl-{pid}",
                           help="Input float32 (N, H, W, C) in [0, 1], calibrated probabilities out; int8 inside.")
        st.dataframe(report_rows(report), hide_index=True, width="stretch")
        st.caption(f"Checked on {report['test_images']:,} images ({report['test_source']}); calibrated on "
                   f"{report['calibration_images']} ({report['calibration_source']}).")
    elif task and task["status"] in (*tasks.ACTIVE, "failed"):
        ui.watch_task(task)
    elif st.button(f"Prepare {label}", icon=":material/compress:", key=f"{kind}-make-{pid}",
                   help="Calibrates on images like the model's, quantizes, then checks accuracy in the file's own "
                        "runtime against the float model, in the background."):
        def work(progress: Any) -> tuple[bytes, dict]:
            progress(0.05, "gathering calibration and test images")
            calibration = quantize.calibration_set(model, model_source)
            test = quantize.test_set(model, model_source)
            progress(0.3, f"quantizing to {label} and checking it against the float model")
            return quantize.export_int8(model, fmt, calibration.images, test.images, test.labels,
                                        calibration.source, test.source)

        ui.background().submit(ui.owner(), kind, f"{source}:{stamp}", work, label=f"{label} export")
        st.rerun()
