"""The UniPT paper's published numbers (CVPR 2024, arXiv 2308.14316, Tables 1-5), as data for reports.

Units as printed: Params in millions of trainable parameters; Memory in "paper G" = the reference
code's max_memory_allocated / 1024**2 / 1000, per GPU, with `gpus` data-parallel GPUs ("8.0*4").
Metric columns keep the paper's labels. None marks a value the paper does not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperRow:
    params_m: float | None
    memory_g: float | None
    gpus: int = 1
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    metric_columns: tuple[str, ...]
    rows: dict[str, PaperRow]  # method name (as registered) -> row
    reference: str  # the method memory ratios are taken against
    note: str = ""


TABLES: dict[str, PaperTable] = {
    "table1": PaperTable(
        "table1", "Table 1: ITR, VSE-infinity, ResNeXt-101 + BERT-base (Flickr30K / MSCOCO)",
        ("F30K T-I", "F30K I-T", "F30K Rsum", "COCO1K T-I", "COCO1K I-T", "COCO1K Rsum", "COCO5K T-I", "COCO5K I-T",
         "COCO5K Rsum"),
        {
            "lst": PaperRow(9.7, 15.1, 1, {"F30K T-I": 82.1, "F30K I-T": 66.5, "F30K Rsum": 529.5,
                                           "COCO1K T-I": 78.2, "COCO1K I-T": 64.8, "COCO1K Rsum": 525.8,
                                           "COCO5K T-I": 57.8, "COCO5K I-T": 43.1, "COCO5K Rsum": 434.5}),
            "unipt": PaperRow(12.4, 15.1, 1, {"F30K T-I": 84.8, "F30K I-T": 69.1, "F30K Rsum": 537.4,
                                              "COCO1K T-I": 80.6, "COCO1K I-T": 67.5, "COCO1K Rsum": 532.9,
                                              "COCO5K T-I": 61.1, "COCO5K I-T": 45.9, "COCO5K Rsum": 445.3}),
        },
        reference="lst",
        note="The original table also has Fully-FT and Partially rows whose numbers are not in the text.",
    ),
    "table2": PaperTable(
        "table2", "Table 2: VTR, CLIP4Clip (CLIP ViT-B/32 + text), MSR-VTT / MSVD",
        ("MSR-VTT T-V", "MSR-VTT V-T", "MSR-VTT Rsum", "MSVD T-V", "MSVD V-T", "MSVD Rsum"),
        {
            "lst": PaperRow(11.2, 8.0, 4, {"MSR-VTT T-V": 37.0, "MSR-VTT V-T": 37.8, "MSR-VTT Rsum": 356.7,
                                           "MSVD T-V": 35.5, "MSVD V-T": 55.4, "MSVD Rsum": 407.2}),
            "unipt": PaperRow(9.6, 3.4, 4, {"MSR-VTT T-V": 38.9, "MSR-VTT V-T": 39.3, "MSR-VTT Rsum": 361.3,
                                            "MSVD T-V": 40.9, "MSVD V-T": 59.7, "MSVD Rsum": 432.1}),
        },
        reference="lst",
    ),
    "table3": PaperTable(
        "table3", "Table 3: VQAv2 / GQA, CLIP-ViL joint transformer",
        ("VQAv2 test-dev", "VQAv2 test-std", "GQA test-dev", "GQA test-std"),
        {
            "lst": PaperRow(13.4, 6.4, 4, {"VQAv2 test-dev": 75.29, "VQAv2 test-std": 75.44, "GQA test-dev": 59.93,
                                           "GQA test-std": 60.75}),
            "unipt": PaperRow(10.3, 2.9, 4, {"VQAv2 test-dev": 75.33, "VQAv2 test-std": 75.53, "GQA test-dev": 60.10,
                                             "GQA test-std": 60.72}),
        },
        reference="lst",
    ),
    "table4": PaperTable(
        "table4", "Table 4: visual grounding, MDETR encoder-decoder (RefCOCO / + / g)",
        ("RefCOCO val", "RefCOCO testA", "RefCOCO testB", "RefCOCO+ val", "RefCOCO+ testA", "RefCOCO+ testB",
         "RefCOCOg val", "RefCOCOg test"),
        {
            "lst": PaperRow(0.9, 6.3, 2, {"RefCOCO val": 81.63, "RefCOCO testA": 85.19, "RefCOCO testB": 76.03,
                                          "RefCOCO+ val": 71.32, "RefCOCO+ testA": 78.20, "RefCOCO+ testB": 62.06,
                                          "RefCOCOg val": 72.53, "RefCOCOg test": 73.67}),
            "unipt": PaperRow(0.7, 3.4, 2, {"RefCOCO val": 82.71, "RefCOCO testA": 86.25, "RefCOCO testB": 78.16,
                                            "RefCOCO+ val": 72.94, "RefCOCO+ testA": 79.18, "RefCOCO+ testB": 64.49,
                                            "RefCOCOg val": 77.04, "RefCOCOg test": 77.33}),
        },
        reference="lst",
    ),
    "table5-bert": PaperTable(
        "table5-bert", "Table 5 (left): PETL methods on Flickr30K, BERT-base text encoder + BUTD regions",
        ("T-I", "I-T", "Rsum"),
        {
            "bitfit": PaperRow(0.9, 8.6, 1, {"T-I": 77.3, "I-T": 57.8, "Rsum": 503.9}),
            "adapter": PaperRow(2.6, 8.8, 1, {"T-I": 79.1, "I-T": 60.5, "Rsum": 511.3}),
            "lora": PaperRow(1.1, 8.8, 1, {"T-I": 78.8, "I-T": 59.6, "Rsum": 508.2}),
            "prompt": PaperRow(10.7, 9.4, 1, {"T-I": 78.7, "I-T": 59.0, "Rsum": 508.5}),
            "lst": PaperRow(7.5, 4.6, 1, {"T-I": 71.9, "I-T": 57.3, "Rsum": 501.9}),
            "unipt": PaperRow(5.9, 3.1, 1, {"T-I": 80.2, "I-T": 59.8, "Rsum": 510.5}),
        },
        reference="adapter",
        note="LST's T-I reads 719 in the OCR of the paper (71.9; 77.9 is possible).",
    ),
    "table5-resnext": PaperTable(
        "table5-resnext", "Table 5 (right): PETL methods on Flickr30K, ResNeXt-101 image encoder + Bi-GRU",
        ("T-I", "I-T", "Rsum"),
        {
            "bitfit": PaperRow(2.2, 21.0, 8, {"T-I": 83.4, "I-T": 67.4, "Rsum": 530.6}),
            "adapter": PaperRow(3.5, 22.1, 8, {"T-I": 66.8, "I-T": 62.9, "Rsum": 493.3}),
            "lst": PaperRow(2.27, 15.0, 1, {"T-I": 82.3, "I-T": 66.1, "Rsum": 526.7}),
            "unipt": PaperRow(6.4, 15.0, 1, {"T-I": 84.0, "I-T": 67.7, "Rsum": 532.1}),
        },
        reference="lst",
        note="LoRA and Prompt do not apply to a CNN. LST's Params reads 22.7 in the OCR: Table 1's 9.7 = 7.5 + 2.2 "
             "shows a lost decimal point (2.27).",
    ),
}


def paper_g(nbytes: int | None) -> float | None:
    """Bytes -> the paper's unit: MiB / 1000."""
    return None if nbytes is None else nbytes / 2**20 / 1000
