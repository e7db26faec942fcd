"""Load partner profiles and report every error with the file and line it is on.

PyYAML's node tree keeps the position of every key and item, so a pydantic error location
(``channels.1.endpoint``) is walked down the tree to the exact line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hub.partners.schemas import ChannelBase, Profile


@dataclass(frozen=True)
class ProfileError:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class ProfileLoadError(Exception):
    def __init__(self, errors: list[ProfileError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest node that ``loc`` reaches."""
    line = (node.start_mark.line + 1) if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = value
                    line = key.start_mark.line + 1
                    break
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    if node is not None and not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        line = node.start_mark.line + 1
    return line


def _errors(
    path: Path, root: yaml.Node | None, exc: ValidationError, prefix: tuple[Any, ...] = ()
) -> list[ProfileError]:
    out = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top)"
        out.append(ProfileError(path, _line_of(root, loc), f"{where}: {err['msg']}"))
    return out


ChannelSchemas = Mapping[str, type[BaseModel]]


def load_profile(path: Path, channel_schemas: ChannelSchemas) -> Profile:
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ProfileLoadError([ProfileError(path, line, f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ProfileLoadError([ProfileError(path, 1, "a profile is a YAML mapping")])
    errors: list[ProfileError] = []
    channels: list[BaseModel] = []
    for i, raw in enumerate(data.get("channels") or []):
        try:
            base = ChannelBase.model_validate(
                {k: raw.get(k) for k in ("adapter", "direction")} if isinstance(raw, dict) else raw
            )
        except ValidationError as exc:
            errors += _errors(path, root, exc, ("channels", i))
            continue
        schema = channel_schemas.get(base.adapter)
        if schema is None:
            errors.append(
                ProfileError(
                    path,
                    _line_of(root, ("channels", i, "adapter")),
                    f"channels.{i}.adapter: unknown adapter {base.adapter!r}; "
                    f"known: {', '.join(sorted(channel_schemas))}",
                )
            )
            continue
        try:
            channels.append(schema.model_validate(raw))
        except ValidationError as exc:
            errors += _errors(path, root, exc, ("channels", i))
    try:
        profile = Profile.model_validate({**data, "channels": ()})
    except ValidationError as exc:
        errors += _errors(path, root, exc)
        profile = None
    if profile is not None and profile.id != path.stem:
        errors.append(
            ProfileError(path, _line_of(root, ("id",)), f"id {profile.id!r} must match the file name {path.stem!r}")
        )
    if profile is not None:
        errors += _unknown_secret_names(path, root, channels, profile)
    if errors or profile is None:
        raise ProfileLoadError(errors)
    return profile.model_copy(update={"channels": tuple(channels)})


def _unknown_secret_names(
    path: Path, root: yaml.Node | None, channels: list[BaseModel], profile: Profile
) -> list[ProfileError]:
    """A channel names its secrets by their entry in ``secrets`` (whose value is env:/file:). A
    name that is no entry is refused: it is most often the secret itself, pasted where its name
    belongs — which put it in the profile, in the repository, and disabled the channel. The
    error does not repeat the value."""
    errors = []
    for i, channel in enumerate(channels):
        names = channel.secret_names() if hasattr(channel, "secret_names") else []
        for loc, name in names:
            if name not in profile.secrets:
                where = ".".join(str(part) for part in ("channels", i, *loc))
                errors.append(
                    ProfileError(
                        path,
                        _line_of(root, ("channels", i, *loc)),
                        f"{where}: names no entry of `secrets`; give the name of an entry there (whose value is "
                        "env:NAME or file:/path), never the secret itself",
                    )
                )
    return errors


@dataclass
class PartnerDirectory:
    """All profiles, by id. Built once at start-up; immutable afterwards."""

    profiles: dict[str, Profile]

    def get(self, partner_id: str) -> Profile | None:
        return self.profiles.get(partner_id)

    def __contains__(self, partner_id: str) -> bool:
        return partner_id in self.profiles

    def by_identifier(self, key: str, value: str) -> Profile | None:
        for p in self.profiles.values():
            if p.identifiers.get(key) == value:
                return p
        return None


def load_directory(directory: Path, channel_schemas: ChannelSchemas) -> tuple[PartnerDirectory, list[ProfileError]]:
    profiles: dict[str, Profile] = {}
    errors: list[ProfileError] = []
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        try:
            profile = load_profile(path, channel_schemas)
        except ProfileLoadError as exc:
            errors += exc.errors
            continue
        profiles[profile.id] = profile
    return PartnerDirectory(profiles), errors


def resolve_secret(reference: str, reader: Callable[[str], str | None] | None = None) -> str | None:
    """Resolve ``env:NAME`` / ``file:/path``; None if the secret is not configured."""
    import os

    if reference.startswith("env:"):
        return (reader or os.environ.get)(reference[4:]) or None
    if reference.startswith("file:"):
        p = Path(reference[5:])
        return p.read_text(encoding="utf-8").strip() if p.is_file() else None
    return None
