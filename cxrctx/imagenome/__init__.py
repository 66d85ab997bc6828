"""build-rois: the 11 CLALA-Net ROIs of each image from Chest ImaGenome scene graphs."""

from cxrctx.imagenome.build import (
    ROI_SCHEMA_VERSION,
    RoiBox,
    RoiReject,
    RoiResult,
    RoiRow,
    build_rois,
    clean_box,
    parse_scene_graph,
    read_rois,
    scene_graph_dir,
)

__all__ = [
    "ROI_SCHEMA_VERSION",
    "RoiBox",
    "RoiReject",
    "RoiResult",
    "RoiRow",
    "build_rois",
    "clean_box",
    "parse_scene_graph",
    "read_rois",
    "scene_graph_dir",
]
