"""Generated land-cover scenes (:mod:`deeplab_geo.tools.sample`) as a dataset, held in memory."""

from __future__ import annotations

from deeplab_geo.datasets.base import Sample, SegmentationDataset
from deeplab_geo.tools.sample import CLASS_COLOURS, CLASS_NAMES, PIXEL_M, synthesize_scene


class SyntheticScenes(SegmentationDataset):
    """One sample per seed: the whole ``size`` x ``size`` scene, generated once."""

    def __init__(self, seeds: list[int], size: int) -> None:
        self.seeds = list(seeds)
        self.name = f"synthetic scenes {self.seeds} ({size} px)"
        self.classes = list(CLASS_NAMES)
        self.colours = [list(c) for c in CLASS_COLOURS]
        self.in_channels = 3
        self.resolution = PIXEL_M
        self._scenes = [synthesize_scene(seed, size) for seed in self.seeds]

    def __len__(self) -> int:
        return len(self._scenes)

    def __getitem__(self, index: int) -> Sample:
        return self._scenes[index]
