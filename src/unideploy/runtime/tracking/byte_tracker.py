"""ByteTrack (Zhang et al., 2022) and BoT-SORT (Aharon et al., 2022) over :class:`Detections`, torch-free.

Per frame: detections split by score into high and low; tracked and lost tracks are predicted by their Kalman
filters (and, for BoT-SORT, moved by the camera motion); the high detections are matched to them on score-fused
IoU, the tracks still unmatched to the low detections on plain IoU, and the unconfirmed tracks (born last frame)
to the high detections left; unmatched high detections above ``new_track_thresh`` start tracks, and tracks lost
longer than ``track_buffer`` frames are removed. The bookkeeping (which list a track moves to, duplicate removal
between tracked and lost tracks, when an identity is spent) follows Ultralytics' trackers, so the same
detections give the same identities and boxes (tests/test_track_parity.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unideploy.core.ops.rotated import probiou
from unideploy.core.results import Detections, OrientedBoxes, OrientedDetections
from unideploy.runtime.tracking.config import TrackerConfig
from unideploy.runtime.tracking.gmc import SparseFlowGMC, warp_states
from unideploy.runtime.tracking.kalman import KalmanXYAH, KalmanXYWH
from unideploy.runtime.tracking.matching import fuse_score, iou_cost, linear_assignment

__all__ = ["BotSort", "ByteTrack", "Track", "make_tracker"]

NEW, TRACKED, LOST, REMOVED = 0, 1, 2, 3
_REMOVED_KEPT = 1000  # removed identities remembered (a lost track is dropped from the lost list by them)


class Track:
    """One tracked object (or a detection that may become one)."""

    __slots__ = ("angle", "cls", "cov", "frame_id", "idx", "is_activated", "mean", "score", "start_frame", "state",
                 "tlwh0", "track_id")

    def __init__(self, tlwh: np.ndarray, score: Any, cls: Any, idx: int, angle: float | None = None) -> None:
        self.tlwh0 = tlwh  # float32 (4,): the detection box, used until the filter starts
        self.score, self.cls, self.idx = score, cls, idx
        self.angle = angle  # rotated boxes: radians, long-edge form (None for axis-aligned boxes)
        self.mean: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.track_id = 0
        self.state = NEW
        self.is_activated = False
        self.frame_id = self.start_frame = 0

    def __repr__(self) -> str:
        return f"<Track {self.track_id} state={self.state} frames {self.start_frame}-{self.frame_id}>"


class ByteTrack:
    """ByteTrack: two-stage association by IoU, high-score detections first.

    Args:
        config: the settings (Ultralytics' keys); default: ByteTrack's.

    Example:
        >>> tracker = ByteTrack()
        >>> dets = Detections(np.array([[10, 10, 50, 50]]), np.array([0.9]), np.array([0]))
        >>> tracker.update(dets).tracker_id.tolist()  # the first frame confirms tracks at once
        [1]
    """

    kalman_class: type[KalmanXYAH] = KalmanXYAH

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig("bytetrack")
        self.kf = self.kalman_class()
        self.obb = False  # rotated boxes (OrientedDetections): matched on probabilistic IoU, angle carried along
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart identities at 1 (a new video)."""
        self.tracked: list[Track] = []
        self.lost: list[Track] = []
        self.removed_ids: list[int] = []
        self.frame_id = 0
        self._next_id = 0

    # -- geometry -----------------------------------------------------------------------------------
    def _xyxy(self, tracks: list[Track]) -> np.ndarray:
        """float32 (T, 4) boxes from the tracks' filter states (every track given has one)."""
        if not tracks:
            return np.zeros((0, 4), np.float32)
        tlwh = self.kf.to_tlwh(np.array([t.mean for t in tracks]))
        tlwh[:, 2:] += tlwh[:, :2]
        return tlwh.astype(np.float32)

    def _geom(self, tracks: list[Track]) -> np.ndarray:
        """What association compares: xyxy float32 (T, 4), or for rotated boxes xywh + angle float32 (T, 5)."""
        if not self.obb:
            return self._xyxy(tracks)
        if not tracks:
            return np.zeros((0, 5), np.float32)
        tlwh = self.kf.to_tlwh(np.array([t.mean for t in tracks]))
        tlwh[:, :2] += tlwh[:, 2:] / 2
        return np.concatenate([tlwh, np.array([[t.angle] for t in tracks], np.float64)], 1).astype(np.float32)

    @staticmethod
    def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``1 - IoU`` (axis-aligned) or ``1 - probiou`` (rotated, as Ultralytics' trackers) of two box sets."""
        if a.shape[1] == 5:
            return 1 - probiou(a, b) if len(a) and len(b) else np.ones((len(a), len(b)), np.float32)
        return iou_cost(a, b)

    def _cost(self, track_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray) -> np.ndarray:
        cost = self._dist(track_boxes, det_boxes)
        if self.config.fuse_score:
            cost = fuse_score(cost, det_scores)
        return cost

    # -- filter -------------------------------------------------------------------------------------
    def _predict(self, tracks: list[Track]) -> None:
        if not tracks:
            return
        mean = np.array([t.mean for t in tracks])
        cov = np.array([t.cov for t in tracks])
        not_tracked = [i for i, t in enumerate(tracks) if t.state != TRACKED]
        for col in self.kalman_class.frozen_velocity:
            mean[not_tracked, col] = 0
        mean, cov = self.kf.predict(mean, cov)
        for t, m, c in zip(tracks, mean, cov):
            t.mean, t.cov = m, c

    def _correct(self, pairs: list[tuple[Track, Track]]) -> None:
        """Kalman update of each track with its matched detection (all at once)."""
        if not pairs:
            return
        mean = np.array([t.mean for t, _ in pairs])
        cov = np.array([t.cov for t, _ in pairs])
        z = self.kf.measure(np.array([d.tlwh0 for _, d in pairs]))
        mean, cov = self.kf.update(mean, cov, z)
        for (t, _), m, c in zip(pairs, mean, cov):
            t.mean, t.cov = m, c

    def _camera_motion(self, tracks: list[Track], image: np.ndarray | None) -> None:
        """Hook for camera-motion compensation (BoT-SORT)."""

    # -- the frame ----------------------------------------------------------------------------------
    def update(self, detections: Detections, image: np.ndarray | None = None) -> Detections:
        """Advance one frame: match ``detections`` to the tracks; the confirmed tracks of this frame.

        Args:
            detections: this frame's detections (any score; the thresholds split them).
            image: the BGR frame (used by BoT-SORT's camera-motion compensation; ignored by ByteTrack).

        Returns:
            The tracked objects: the detections that matched confirmed tracks, in the trackers' order, with the
            Kalman-filtered box in ``xyxy`` and the identity in ``tracker_id`` (masks, keypoints and other fields
            are those of the matched detection).
        """
        cfg = self.config
        self.frame_id += 1
        self.obb = isinstance(detections, OrientedDetections)
        if self.obb:
            xywh, tlwh, angles, det_boxes = _rotated(detections)
        else:
            xyxy = np.asarray(detections.xyxy, np.float32)
            xywh = np.empty_like(xyxy)
            xywh[:, :2] = (xyxy[:, :2] + xyxy[:, 2:]) / 2
            xywh[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
            tlwh = xywh.copy()
            tlwh[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
            det_boxes = tlwh.copy()  # the detections' boxes as the trackers see them (left-top + size, in float32)
            det_boxes[:, 2:] += det_boxes[:, :2]
            angles = [None] * len(xyxy)
        scores, cls = detections.confidence, detections.class_id
        valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        high = np.flatnonzero(valid & (scores >= cfg.track_high_thresh))
        low = np.flatnonzero(valid & (scores > cfg.track_low_thresh) & (scores < cfg.track_high_thresh))
        dets = [Track(tlwh[i], scores[i], cls[i], int(i), angles[i]) for i in high]
        dets_low = [Track(tlwh[i], scores[i], cls[i], int(i), angles[i]) for i in low]
        activated: list[Track] = []
        refound: list[Track] = []
        lost: list[Track] = []
        removed: list[Track] = []
        matched: list[tuple[Track, Track]] = []

        unconfirmed = [t for t in self.tracked if not t.is_activated]
        pool = _joint([t for t in self.tracked if t.is_activated], self.lost)
        self._predict(pool)
        self._camera_motion(pool + unconfirmed, image)
        pool_boxes = self._geom(pool)

        def take(track: Track, det: Track) -> None:
            matched.append((track, det))
            (activated if track.state == TRACKED else refound).append(track)
            track.state, track.is_activated, track.frame_id = TRACKED, True, self.frame_id
            track.score, track.cls, track.idx = det.score, det.cls, det.idx
            if track.angle is not None:  # the half-turn form nearest the track's angle, so it never flips
                track.angle = det.angle - np.pi * round((det.angle - track.angle) / np.pi)

        # 1: tracked + lost tracks <-> high detections, on score-fused IoU
        pairs, u_track, u_det = linear_assignment(self._cost(pool_boxes, det_boxes[high], scores[high]),
                                                  cfg.match_thresh)
        for i, j in pairs:
            take(pool[i], dets[j])
        # 2: the tracked ones still unmatched <-> low detections, on IoU
        rest_at = [i for i in u_track if pool[i].state == TRACKED]
        rest = [pool[i] for i in rest_at]
        if rest and dets_low:
            pairs, u_rest, _ = linear_assignment(self._dist(pool_boxes[rest_at], det_boxes[low]), 0.5)
            for i, j in pairs:
                take(rest[i], dets_low[j])
        else:
            u_rest = np.arange(len(rest))
        for i in u_rest:
            rest[i].state = LOST
            lost.append(rest[i])
        # 3: unconfirmed tracks <-> high detections left
        dets = [dets[i] for i in u_det]
        if unconfirmed:
            left = high[u_det]
            cost = self._cost(self._geom(unconfirmed), det_boxes[left], scores[left])
            pairs, u_unc, u_new = linear_assignment(cost, 0.7)
            for i, j in pairs:
                take(unconfirmed[i], dets[j])
            for i in u_unc:
                unconfirmed[i].state = REMOVED
                removed.append(unconfirmed[i])
        else:
            u_new = np.arange(len(dets))
        self._correct(matched)
        # 4: new tracks from the high detections nobody took
        born = [dets[i] for i in u_new if dets[i].score >= cfg.new_track_thresh]
        if born:
            mean, cov = self.kf.initiate(self.kf.measure(np.array([d.tlwh0 for d in born])))
            for t, m, c in zip(born, mean, cov):
                self._next_id += 1
                t.track_id, t.mean, t.cov, t.state = self._next_id, m, c, TRACKED
                t.is_activated = self.frame_id == 1
                t.frame_id = t.start_frame = self.frame_id
                activated.append(t)
        for t in self.lost:
            if self.frame_id - t.frame_id > cfg.track_buffer:
                t.state = REMOVED
                removed.append(t)
        self._merge(activated, refound, lost, removed)
        return self._output(detections)

    def _merge(self, activated: list[Track], refound: list[Track], lost: list[Track], removed: list[Track]) -> None:
        tracked = _joint(_joint([t for t in self.tracked if t.state == TRACKED], activated), refound)
        ids = {t.track_id for t in tracked}
        old_removed = set(self.removed_ids)
        lost_all = [t for t in self.lost if t.track_id not in ids] + lost
        lost_all = [t for t in lost_all if t.track_id not in old_removed]
        self.tracked, self.lost = self._drop_duplicates(tracked, lost_all)
        self.removed_ids.extend(t.track_id for t in removed)
        if len(self.removed_ids) > _REMOVED_KEPT:
            self.removed_ids = self.removed_ids[-_REMOVED_KEPT:]

    def _drop_duplicates(self, a: list[Track], b: list[Track]) -> tuple[list[Track], list[Track]]:
        """A tracked and a lost track on the same object (IoU > 0.85): keep the one tracked longer."""
        if not a or not b:
            return a, b
        close = np.argwhere(self._dist(self._geom(a), self._geom(b)) < 0.15)
        drop_a, drop_b = set(), set()
        for p, q in close:
            if a[p].frame_id - a[p].start_frame > b[q].frame_id - b[q].start_frame:
                drop_b.add(q)
            else:
                drop_a.add(p)
        return [t for i, t in enumerate(a) if i not in drop_a], [t for i, t in enumerate(b) if i not in drop_b]

    def _output(self, detections: Detections) -> Detections:
        shown = [t for t in self.tracked if t.is_activated]
        out = detections[np.array([t.idx for t in shown], dtype=np.int64)]
        if self.obb:  # the filtered centre and size with the matched detection's angle; xyxy: the corners' bounds
            out.obb = OrientedBoxes(self._geom(shown))  # type: ignore[attr-defined]
            out.xyxy = out.obb.xyxy.astype(np.float32)  # type: ignore[attr-defined]
        else:
            out.xyxy = self._xyxy(shown)
        out.tracker_id = np.array([t.track_id for t in shown], dtype=np.int64)
        return out


class BotSort(ByteTrack):
    """BoT-SORT without ReID: ByteTrack's association on a (cx, cy, w, h) Kalman filter with camera-motion
    compensation by sparse optical flow (``gmc_method: sparseOptFlow``; ``none`` turns it off).

    Example:
        >>> tracker = BotSort(TrackerConfig("botsort", gmc_method="none"))
        >>> dets = Detections(np.array([[10, 10, 50, 50]]), np.array([0.9]), np.array([0]))
        >>> tracker.update(dets).tracker_id.tolist()
        [1]
    """

    kalman_class = KalmanXYWH

    def __init__(self, config: TrackerConfig | None = None) -> None:
        config = config or TrackerConfig("botsort")
        self.gmc = SparseFlowGMC() if config.gmc_method == "sparseOptFlow" else None
        super().__init__(config)

    def reset(self) -> None:
        super().reset()
        if self.gmc is not None:
            self.gmc.reset()

    def _camera_motion(self, tracks: list[Track], image: np.ndarray | None) -> None:
        if self.gmc is None or image is None:
            return
        try:
            warp = self.gmc.apply(image)
        except Exception:  # noqa: BLE001 - OpenCV may fail on a degenerate frame; no motion is the safe answer
            warp = np.eye(2, 3)
        if tracks:
            mean, cov = warp_states(np.array([t.mean for t in tracks]), np.array([t.cov for t in tracks]), warp)
            for t, m, c in zip(tracks, mean, cov):
                t.mean, t.cov = m, c


def _rotated(detections: OrientedDetections) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Rotated detections as the trackers see them: (xywh as given, for the validity check; the left-top + size
    boxes float32 in long-edge form (w >= h, a quarter turn added where w and h were swapped); their angles, float64;
    xywh + angle float32 for matching)."""
    given = np.asarray(detections.obb.xywhr, np.float32)  # type: ignore[union-attr]
    r = given.astype(np.float64)
    swap = r[:, 2] < r[:, 3]
    r[swap] = r[swap][:, [0, 1, 3, 2, 4]] + np.array([0, 0, 0, 0, np.pi / 2])
    tl = (r[:, :2] - r[:, 2:4] / 2).astype(np.float32)  # left-top in float32, as the box is stored
    wh = r[:, 2:4].astype(np.float32)
    geom = np.concatenate([tl + wh / 2, wh, r[:, 4:5].astype(np.float32)], 1)
    return given[:, :4], np.concatenate([tl, wh], 1), [float(a) for a in r[:, 4]], geom


def _joint(a: list[Track], b: list[Track]) -> list[Track]:
    ids = {t.track_id for t in a}
    return a + [t for t in b if t.track_id not in ids]


def make_tracker(config: TrackerConfig) -> ByteTrack:
    """The tracker ``config.tracker_type`` names, configured.

    Example:
        >>> type(make_tracker(TrackerConfig("botsort"))).__name__
        'BotSort'
    """
    return {"bytetrack": ByteTrack, "botsort": BotSort}[config.tracker_type](config)
