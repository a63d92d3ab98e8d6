"""Per-task-kind pipelines: decoded input → network tensors → masks in the source grid.

``FRAME_PIPELINES`` keys the POST /v1/segment operators by task kind (a card's ``task``); a new
2-D task kind is one module with a :class:`~services.pipelines.base.FramePipeline` and one entry
here. Volumes (``volume3d``) have their own route and use case.
"""

from __future__ import annotations

from services.pipelines.base import FramePipeline
from services.pipelines.class_prompted import ClassPromptedPipeline
from services.pipelines.frame_pair import FramePairPipeline
from services.pipelines.image2d import Image2dPipeline

FRAME_PIPELINES: dict[str, FramePipeline] = {
    pipeline.task: pipeline for pipeline in (Image2dPipeline(), FramePairPipeline(), ClassPromptedPipeline())
}
