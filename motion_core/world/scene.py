"""The small world: scenes, people, motions, clips and edit cases with their ground truth.

Everything is drawn at ``POSE_SIZE`` pixels (the resolution of the ControlNet pose images) and then
area-averaged by 8 to the world's image, which is what its fixed "VAE" (``world.vae``) turns into
latents: SD1.5's factor 8 between pose images and latents is kept, so the engine runs unchanged.

* **Scene**: a wall and a floor of random colours, a horizon at a random height, 2-4 coloured shapes on
  the wall and a striped or checked floor. Random per seed; the prompt names only the wall's colour.
* **Person**: an articulated figure drawn from OpenPose-18 keypoints: head, neck, torso, arms and legs
  of some thickness, shirt and trouser colours (named coarsely in the prompt, exact shade random) and a
  shirt pattern (plain, stripes or a band), so that only the source clip pins the exact look.
* **Motion**: ``MOTIONS`` (walk, wave, jump, squat, kick, arm circles, clap) with random speed,
  amplitude, phase, position and scale.
* **Edit case**: a source clip and a reference motion performed by another person elsewhere in another
  scene; the ground truth is the source scene and person performing the reference motion after the
  engine's own skeleton alignment (``pose.align_skeletons``), i.e. exactly what a perfect edit gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..pose import align_skeletons

#: pixels of the pose images; the world's images and latents are 8 times smaller
POSE_SIZE = 256
LATENT_SIZE = POSE_SIZE // 8

# Rest pose in units of body height, origin at the top of the head's centre line; (x, y). OpenPose-18 order.
REST = np.array([
    (0.0, 0.07), (0.0, 0.17), (-0.10, 0.18), (-0.13, 0.34), (-0.15, 0.48), (0.10, 0.18), (0.13, 0.34),
    (0.15, 0.48), (-0.06, 0.50), (-0.07, 0.73), (-0.08, 0.96), (0.06, 0.50), (0.07, 0.73), (0.08, 0.96),
    (-0.025, 0.05), (0.025, 0.05), (-0.05, 0.065), (0.05, 0.065),
], dtype=np.float64)

MOTIONS = ("walk", "wave", "jump", "squat", "kick", "arm_circles", "clap")
#: the verb phrase each motion gets in a prompt
MOTION_WORDS = {
    "walk": "is walking", "wave": "is waving", "jump": "is jumping", "squat": "is squatting",
    "kick": "is kicking", "arm_circles": "is circling arms", "clap": "is clapping",
}

#: named colours (RGB 0..1); a person's or wall's exact shade is jittered around its name
COLOURS = {
    "red": (0.85, 0.15, 0.12), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.88, 0.2),
    "green": (0.2, 0.7, 0.25), "blue": (0.15, 0.3, 0.85), "purple": (0.55, 0.2, 0.7),
    "pink": (0.95, 0.55, 0.7), "white": (0.92, 0.92, 0.9), "black": (0.1, 0.1, 0.12), "grey": (0.5, 0.5, 0.52),
}
SHIRT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")
TROUSER_COLOURS = ("blue", "black", "grey", "green", "red", "white")
WALL_COLOURS = ("white", "grey", "yellow", "green", "blue", "pink", "orange")
PATTERNS = ("plain", "stripes", "band")

# the body's drawn segments: (joint a, joint b, part) with part shirt/trousers/skin
_SEGMENTS = (
    (2, 3, "shirt"), (3, 4, "skin"), (5, 6, "shirt"), (6, 7, "skin"),
    (8, 9, "trousers"), (9, 10, "trousers"), (11, 12, "trousers"), (12, 13, "trousers"), (1, 0, "skin"),
)
SKIN = np.array([0.88, 0.7, 0.55])


@dataclass
class Scene:
    seed: int
    wall: np.ndarray  # RGB
    wall_name: str
    floor: np.ndarray
    horizon: float  # fraction of the height
    image: np.ndarray = field(repr=False)  # (POSE_SIZE, POSE_SIZE, 3) float32 0..1


@dataclass
class Person:
    seed: int
    shirt: np.ndarray
    shirt_name: str
    trousers: np.ndarray
    trousers_name: str
    pattern: str
    pattern_colour: np.ndarray
    thickness: float  # limb thickness in body units


@dataclass
class MotionParams:
    name: str
    cycles: float  # motion cycles per clip
    amplitude: float
    phase: float
    center_x: float  # head x as a fraction of the width
    top: float  # head top as a fraction of the height
    height: float  # body height as a fraction of the height


@dataclass
class Clip:
    """A rendered clip. Images are ``(n, POSE_SIZE, POSE_SIZE, 3)`` float32 0..1 (world pixels before
    the VAE's 8x pooling); keypoints ``(n, 18, 3)`` pixels of the pose canvas; masks ``(n, S, S)`` 0/1."""

    scene: Scene
    person: Person
    motion: MotionParams
    keypoints: np.ndarray
    images: np.ndarray = field(repr=False)
    masks: np.ndarray = field(repr=False)

    @property
    def num_frames(self) -> int:
        return self.keypoints.shape[0]

    def prompt_content(self) -> str:
        return content_prompt(self.person, self.scene)

    def prompt_source(self) -> str:
        return f"{self.prompt_content()} {MOTION_WORDS[self.motion.name]}"


def content_prompt(person: Person, scene: Scene) -> str:
    """``P_c``: who and where, no motion ("a person in a red shirt and blue trousers by a grey wall")."""
    return f"a person in a {person.shirt_name} shirt and {person.trousers_name} trousers by a {scene.wall_name} wall"


def motion_prompt(person: Person, scene: Scene, motion: str) -> str:
    """``P_s`` / ``P_t``: the content prompt plus a motion ("... is waving")."""
    return f"{content_prompt(person, scene)} {MOTION_WORDS[motion]}"


def _shade(rng: np.random.Generator, name: str, jitter: float = 0.08) -> np.ndarray:
    return np.clip(np.array(COLOURS[name]) + rng.uniform(-jitter, jitter, 3), 0, 1)


def make_scene(seed: int) -> Scene:
    """A static background: wall + floor, shapes on the wall, a striped or checked floor."""
    rng = np.random.default_rng([seed, 1])
    s = POSE_SIZE
    wall_name = WALL_COLOURS[rng.integers(len(WALL_COLOURS))]
    wall = _shade(rng, wall_name)
    floor = np.clip(rng.uniform(0.15, 0.75, 3) * rng.uniform(0.6, 1.0), 0, 1)
    horizon = float(rng.uniform(0.55, 0.75))
    img = np.empty((s, s, 3), np.float32)
    hy = int(horizon * s)
    img[:hy] = wall
    img[hy:] = floor
    yy, xx = np.mgrid[hy:s, 0:s]
    if rng.random() < 0.5:  # floor stripes
        period = rng.uniform(20, 48)
        stripe = (np.floor((xx + 0.6 * (yy - hy)) / period) % 2)[..., None]
        img[hy:] = floor * (1 - 0.25 * stripe)
    else:  # checks
        period = rng.uniform(24, 56)
        check = ((np.floor(xx / period) + np.floor((yy - hy) / (period * 0.6))) % 2)[..., None]
        img[hy:] = floor * (1 - 0.2 * check)
    for _ in range(rng.integers(2, 5)):  # shapes on the wall
        colour = tuple(float(c) for c in np.clip(rng.uniform(0, 1, 3), 0, 1))
        cx, cy = int(rng.uniform(0.05, 0.95) * s), int(rng.uniform(0.05, 0.85) * hy)
        r = int(rng.uniform(0.05, 0.13) * s)
        if rng.random() < 0.5:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + int(r * rng.uniform(0.5, 1.5))), colour, -1)
        else:
            cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
    # a skirting line between wall and floor
    cv2.line(img, (0, hy), (s, hy), tuple(float(c) for c in wall * 0.6), 3)
    return Scene(seed, wall, wall_name, floor, horizon, np.clip(img, 0, 1))


def make_person(seed: int) -> Person:
    rng = np.random.default_rng([seed, 2])
    shirt_name = SHIRT_COLOURS[rng.integers(len(SHIRT_COLOURS))]
    trousers_name = TROUSER_COLOURS[rng.integers(len(TROUSER_COLOURS))]
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    return Person(seed, _shade(rng, shirt_name), shirt_name, _shade(rng, trousers_name), trousers_name, pattern,
                  np.clip(rng.uniform(0, 1, 3), 0, 1), float(rng.uniform(0.065, 0.085)))


def make_motion(seed: int, name: str | None = None, height: float | None = None,
                center_x: float | None = None) -> MotionParams:
    rng = np.random.default_rng([seed, 3])
    name = name or MOTIONS[rng.integers(len(MOTIONS))]
    if name not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}; got {name!r}")
    h = float(height if height is not None else rng.uniform(0.62, 0.8))
    cx = float(center_x if center_x is not None else rng.uniform(0.32, 0.68))
    top = float(rng.uniform(0.06, max(0.07, 0.97 - h - 0.06)))
    return MotionParams(name, float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.75, 1.2)),
                        float(rng.uniform(0, 2 * np.pi)), cx, top, h)


def _rotate(vec: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return np.concatenate([c * vec[..., :1] - s * vec[..., 1:], s * vec[..., :1] + c * vec[..., 1:]], axis=-1)


def body_motion(name: str, phase: np.ndarray, amplitude: float = 1.0) -> np.ndarray:
    """Joint positions ``(n, 18, 2)`` in body units for motion ``name`` at the given phases (radians),
    vectorised over frames."""
    n = phase.shape[0]
    pts = np.repeat(REST[None], n, axis=0).copy()
    a = float(amplitude)

    def swing(pivot: int, joints, angle):
        pts[:, joints] = pts[:, [pivot]] + _rotate(pts[:, joints] - pts[:, [pivot]], angle[:, None])

    R_ARM, L_ARM = [3, 4], [6, 7]
    if name == "walk":
        s = np.sin(phase)
        swing(8, [9, 10], 0.5 * a * s)
        swing(11, [12, 13], -0.5 * a * s)
        swing(9, [10], -0.35 * a * np.clip(s, 0, None))
        swing(12, [13], 0.35 * a * np.clip(-s, 0, None))
        swing(2, R_ARM, -0.45 * a * s)
        swing(5, L_ARM, 0.45 * a * s)
        pts[..., 1] += 0.015 * np.abs(np.cos(phase))[:, None]
    elif name == "wave":
        up = np.full(n, 2.3)
        swing(2, R_ARM, up)  # right arm raised sideways and up
        swing(3, [4], -0.9 * a * np.sin(2 * phase) - 0.6)
        swing(5, L_ARM, 0.15 * np.sin(phase))
    elif name == "jump":
        h = 0.16 * a * np.clip(np.sin(phase), 0, None)
        tuck = 0.5 * a * np.clip(np.sin(phase), 0, None)
        pts[..., 1] -= h[:, None]
        swing(2, R_ARM, 2.4 * tuck + 0.2)
        swing(5, L_ARM, -2.4 * tuck - 0.2)
        swing(8, [9, 10], -0.4 * tuck)
        swing(11, [12, 13], 0.4 * tuck)
    elif name == "squat":
        d = 0.5 - 0.5 * np.cos(phase)
        depth = 0.16 * a * d
        upper = [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16, 17]
        pts[:, upper, 1] += depth[:, None]
        pts[:, 9, 0] -= 0.09 * a * d
        pts[:, 12, 0] += 0.09 * a * d
        pts[:, [9, 12], 1] += (0.5 * depth)[:, None]
        swing(2, R_ARM, -1.4 * d)  # arms forward/up for balance
        swing(5, L_ARM, 1.4 * d)
    elif name == "kick":
        k = np.clip(np.sin(phase), 0, None) * a
        swing(11, [12, 13], -1.2 * k)  # left leg kicks sideways
        swing(12, [13], 0.3 * k)
        swing(2, R_ARM, 0.9 * k + 0.2)
        swing(5, L_ARM, -0.5 * k - 0.2)
    elif name == "arm_circles":
        swing(2, R_ARM, 1.6 + 1.3 * a * np.sin(phase))
        swing(5, L_ARM, -1.6 - 1.3 * a * np.sin(phase))
    elif name == "clap":
        c = 0.5 + 0.5 * np.sin(phase)
        swing(2, R_ARM, -(1.2 + 0.3 * a) * np.ones(n))
        swing(5, L_ARM, (1.2 + 0.3 * a) * np.ones(n))
        swing(3, [4], -(0.3 + 1.1 * c))
        swing(6, [7], 0.3 + 1.1 * c)
    else:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}; got {name!r}")
    return pts


def motion_keypoints(params: MotionParams, num_frames: int, size: int = POSE_SIZE) -> np.ndarray:
    """Pixel keypoints ``(n, 18, 3)`` (confidence 1) of ``params`` over ``num_frames`` frames."""
    phase = params.phase + 2 * np.pi * params.cycles * np.arange(num_frames) / max(num_frames, 1)
    pts = body_motion(params.name, phase, params.amplitude) * params.height * size
    pts[..., 0] += params.center_x * size
    pts[..., 1] += params.top * size
    return np.concatenate([pts, np.ones(pts.shape[:2] + (1,))], axis=-1).astype(np.float32)


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * 16)), int(round(float(p[1]) * 16))


def draw_person(image: np.ndarray, keypoints: np.ndarray, person: Person) -> np.ndarray:
    """Draw ``person`` over ``image`` (float32 HxWx3, modified in place) in the pose ``keypoints``
    ``(18, 3)``; returns the person's 0/1 mask (HxW uint8). Sub-pixel accurate (fixed-point drawing)."""
    h, w = image.shape[:2]
    k = keypoints[:, :2].astype(np.float64)
    body = float(np.linalg.norm(k[1] - (k[8] + k[11]) / 2)) / 0.33  # torso length -> body height
    thick = max(2, int(round(person.thickness * body)))
    mask = np.zeros((h, w), np.uint8)
    layers = []  # (colour, drawing function) in back-to-front order

    def limb(a, b, colour, t):
        layers.append((colour, lambda img, c: cv2.line(img, _pt(k[a]), _pt(k[b]), c, t, cv2.LINE_AA, shift=4)))

    for a, b, part in _SEGMENTS[4:8]:  # legs first (behind the torso)
        limb(a, b, person.trousers, thick + 1)
    hips = np.array([k[8], k[11]])
    torso = np.array([k[2], k[5], k[11] + (k[11] - k[8]) * 0.15, k[8] + (k[8] - k[11]) * 0.15])
    torso_pts = np.round(torso * 16).astype(np.int32)
    layers.append((person.shirt, lambda img, c: cv2.fillConvexPoly(img, torso_pts, c, cv2.LINE_AA, shift=4)))
    if person.pattern != "plain":
        top, bottom = (k[2] + k[5]) / 2, hips.mean(0)
        bands = (0.35, 0.55) if person.pattern == "band" else (0.25, 0.4, 0.55, 0.7, 0.85)
        for i in range(0, len(bands) - 1, 2):
            t0, t1 = bands[i], bands[i + 1]
            quad = np.array([k[2] + (k[8] - k[2]) * t0, k[5] + (k[11] - k[5]) * t0,
                             k[5] + (k[11] - k[5]) * t1, k[2] + (k[8] - k[2]) * t1])
            qp = np.round(quad * 16).astype(np.int32)
            layers.append((person.pattern_colour, lambda img, c, qp=qp: cv2.fillConvexPoly(img, qp, c, cv2.LINE_AA, shift=4)))
        del top, bottom
    for a, b, part in _SEGMENTS[:4]:  # arms over the torso
        limb(a, b, person.shirt if part == "shirt" else SKIN, thick)
    limb(1, 0, SKIN, max(2, thick - 1))  # neck
    head_r = max(3, int(round(0.065 * body * 16)))
    layers.append((SKIN, lambda img, c: cv2.circle(img, _pt(k[0]), head_r, c, -1, cv2.LINE_AA, shift=4)))
    for colour, draw in layers:
        draw(image, tuple(float(x) for x in colour))
        draw(mask, 1)
    return mask


def render_frames(scene: Scene, person: Person, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, S, S, 3)`` and masks ``(n, S, S)`` of ``person`` in ``scene`` at each keypoint frame."""
    n = keypoints.shape[0]
    images = np.repeat(scene.image[None], n, axis=0).copy()
    masks = np.empty((n, POSE_SIZE, POSE_SIZE), np.uint8)
    for i in range(n):  # OpenCV draws one image at a time
        masks[i] = draw_person(images[i], keypoints[i], person)
    return np.clip(images, 0, 1), masks


def make_clip(scene_seed: int, person_seed: int, motion_seed: int, num_frames: int = 8, motion: str | None = None,
              height: float | None = None, center_x: float | None = None) -> Clip:
    scene, person = make_scene(scene_seed), make_person(person_seed)
    params = make_motion(motion_seed, motion, height, center_x)
    kp = motion_keypoints(params, num_frames)
    images, masks = render_frames(scene, person, kp)
    return Clip(scene, person, params, kp, images, masks)


@dataclass
class EditCase:
    """A source clip, a reference clip (another person, place and motion) and the ground truth: the
    source scene and person performing the aligned reference motion."""

    index: int
    source: Clip
    reference: Clip
    aligned_keypoints: np.ndarray  # the reference skeletons moved onto the source person
    truth_images: np.ndarray = field(repr=False)
    truth_masks: np.ndarray = field(repr=False)

    @property
    def prompt_content(self) -> str:
        return self.source.prompt_content()

    @property
    def prompt_source(self) -> str:
        return self.source.prompt_source()

    @property
    def prompt_target(self) -> str:
        return motion_prompt(self.source.person, self.source.scene, self.reference.motion.name)


def make_case(seed: int, index: int = 0, num_frames: int = 8) -> EditCase:
    """Edit case ``index`` of the set drawn with ``seed``: source and reference differ in scene, person,
    motion, position and size; the ground truth uses the engine's own skeleton alignment."""
    rng = np.random.default_rng([seed, index, 7])
    base = int(rng.integers(1 << 30))
    src_motion, ref_motion = rng.choice(len(MOTIONS), 2, replace=False)
    source = make_clip(base + 1, base + 2, base + 3, num_frames, MOTIONS[src_motion])
    # the reference person stands elsewhere and at another size (what alignment has to undo)
    ref_height = float(np.clip(source.motion.height * rng.uniform(0.75, 1.2), 0.5, 0.85))
    ref_x = float(np.clip(source.motion.center_x + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2), 0.25, 0.75))
    reference = make_clip(base + 4, base + 5, base + 6, num_frames, MOTIONS[ref_motion], ref_height, ref_x)
    aligned = align_skeletons(reference.keypoints, source.keypoints)
    truth, truth_masks = render_frames(source.scene, source.person, aligned)
    return EditCase(index, source, reference, aligned, truth, truth_masks)


def training_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One training frame for the base model: (image (S,S,3), keypoints (18,3), mask (S,S), prompt).

    Frames are independent (SD1.5 is an image model): a random scene, person, motion and phase. The
    prompt is ``P_s`` of that frame (content + motion).
    """
    seeds = rng.integers(1 << 30, size=3)
    scene, person = make_scene(int(seeds[0])), make_person(int(seeds[1]))
    params = make_motion(int(seeds[2]))
    frames = int(rng.integers(4, 24))
    kp = motion_keypoints(params, frames)[rng.integers(frames)][None]
    images, masks = render_frames(scene, person, kp)
    return images[0], kp[0], masks[0], motion_prompt(person, scene, params.name)
