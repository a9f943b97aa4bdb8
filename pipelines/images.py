"""The image policy: a pipeline runs one pinned image (a digest or an exact version tag), never a moving tag."""

import re

from xkd.errors import UsageError

PLACEHOLDER_IMAGE = "xkd-pipeline:0.1.0"  # the components' base_image; always replaced by the `image` parameter
IMAGE_RE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/:-][a-z0-9]+)*?)"
    r"(?:@sha256:[0-9a-f]{64}|:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))$"
)
FLOATING_TAGS = {"latest", "main", "master", "stable", "nightly", "dev", "edge"}


def validate_image(image: str) -> str:
    """`name@sha256:<digest>` or `name:<exact tag>`; no tag, or a moving tag like `latest`, is refused."""
    m = IMAGE_RE.match(image or "")
    if not m or (m["tag"] is not None and m["tag"].lower() in FLOATING_TAGS):
        raise UsageError(
            f"image {image!r} must be pinned: REGISTRY/NAME@sha256:<64 hex> or REGISTRY/NAME:<exact "
            f"version tag> (not {', '.join(sorted(FLOATING_TAGS))})"
        )
    return image
