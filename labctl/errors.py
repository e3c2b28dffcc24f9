"""The exception hierarchy every layer of labctl raises.

Drivers map vendor error codes onto these classes so that the executor can decide what to
do (retry, fail, apply safe state) without knowing any vendor.
"""

from __future__ import annotations


class LabctlError(Exception):
    """Base of every error labctl raises on purpose."""


class ConfigError(LabctlError):
    """A bench configuration file is invalid: names the file, the key and the reason.
    `problems` holds every (key, reason) found, when several were reported at once."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 problems: list[tuple[str, str]] | None = None):
        self.file = file
        self.key = key
        self.problems = list(problems) if problems else [(key or "", message)]
        if problems and len(problems) > 1:
            head = f"{file}: " if file else ""
            lines = "\n".join(f"  {file + ': ' if file else ''}{k}: {m}" for k, m in problems)
            super().__init__(f"{head}{len(problems)} problems:\n{lines}")
            return
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class DeviceError(LabctlError):
    """A device could not do what was asked. `device` names it when known."""

    def __init__(self, message: str, *, device: str | None = None):
        self.device = device
        self.message = message
        super().__init__(f"{device}: {message}" if device else message)


class ProtocolError(DeviceError):
    """The bytes on the wire did not follow the instrument's protocol."""


class DeviceTimeout(DeviceError):
    """No (complete) reply within the allowed time, or a link that stays down."""


class DeviceBusy(DeviceError):
    """The device refused a command because it is busy."""


class DeviceFault(DeviceError):
    """The instrument reported an error; carries the vendor's code and text."""

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        code: int | str | None = None,
        vendor_text: str | None = None,
    ):
        self.code = code
        self.vendor_text = vendor_text
        detail = message
        if code is not None:
            detail = f"{message} (vendor code {code}{': ' + vendor_text if vendor_text else ''})"
        super().__init__(detail, device=device)


class NotInitialized(DeviceFault):
    """The device must be initialised (homed) before it can move."""


class LimitError(DeviceError):
    """A requested value is outside the device's declared limits; nothing was sent."""

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        parameter: str | None = None,
        value: object = None,
        limit: object = None,
    ):
        self.parameter = parameter
        self.value = value
        self.limit = limit
        super().__init__(message, device=device)


class MaterialInDoubt(DeviceError):
    """An earlier attempt of a step delivered material that could not be measured: doing
    the step again could add it twice, so it waits for an operator's decision."""
