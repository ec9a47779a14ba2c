"""Building the button and the orb, with errors that say which key and what to do."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

from voiced.button import ButtonInput, Gesture
from voiced.config import Settings
from voiced.errors import ConfigError
from voiced.orb import OrbDriver

logger = logging.getLogger(__name__)

_DRY_RUN = ("set GPIOZERO_PIN_FACTORY=mock for a dry run without GPIO, or remove the "
            "`{section}:` section")


def _explain(e: BaseException, key: str, section: str) -> ConfigError:
    from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinInvalidPin, PinPWMUnsupported

    if isinstance(e, PinPWMUnsupported):
        msg = ("this pin library has no PWM: use leds.kind: led, or for a dry run "
               "GPIOZERO_PIN_FACTORY=mock GPIOZERO_MOCK_PIN_CLASS=mockpwmpin")
    elif isinstance(e, BadPinFactory):
        msg = _no_pin_library() + "; " + _DRY_RUN.format(section=section)
    elif isinstance(e, GPIOPinInUse):
        msg = f"the pin is already in use ({e}); pick another pin or stop what holds it"
    elif isinstance(e, PinInvalidPin | ValueError):
        msg = f"not a usable pin here: {e}"
    elif isinstance(e, FileNotFoundError | PermissionError):
        msg = (f"{e.strerror or e}: {getattr(e, 'filename', '')}; enable SPI "
               "(raspi-config → Interface Options → SPI) and add the user to the spi group")
    elif isinstance(e, ImportError):
        msg = f"{e}; install it (e.g. `pip install spidev`) or set leds.driver: none"
    else:
        msg = f"{type(e).__name__}: {e}"
    return ConfigError([(key, msg)])


def _no_pin_library() -> str:
    """Why no pin library loaded: lgpio missing, or present but unable to start."""
    if importlib.util.find_spec("lgpio") is None:
        return ("no GPIO pin library works on this machine (on a Pi: install lgpio, e.g. "
                "`pip install lgpio` in the venv)")
    # lgpio is there, so installing it is the wrong advice: at import it makes its
    # .lgd-nfy* pipes in $LG_WD, else in the working directory, and fails where that is
    # read-only (the unit's "/" under ProtectSystem=strict)
    try:
        wd = os.environ.get("LG_WD") or os.getcwd()
    except OSError:
        wd = "(the working directory is gone)"
    state = "writable" if os.access(wd, os.W_OK) else "NOT writable"
    return (f"lgpio is installed but did not start: it needs a writable directory for its "
            f"notification pipes, $LG_WD or else the working directory (now {wd}: {state}; "
            "the unit sets LG_WD=/run/voiced), and access to /dev/gpiochip*")


def _quiet_fallback_warnings() -> None:
    # gpiozero warns once per pin library it cannot load; our error says what to do
    import warnings

    from gpiozero.exc import PinFactoryFallback

    warnings.filterwarnings("ignore", category=PinFactoryFallback)


def build_button(settings: Settings, on_gesture: Callable[[Gesture], None],
                 loop: Any, pin_factory: Any = None) -> ButtonInput | None:
    """The button, started, or None when the config has none.

    Raises:
        ConfigError: naming ``button.pin`` and what to do.
    """
    if settings.button is None:
        return None
    _quiet_fallback_warnings()
    button = ButtonInput(settings.button, on_gesture, pin_factory)
    try:
        button.start(loop)
    except Exception as e:  # noqa: BLE001 - every gpiozero failure is explained
        button.close()
        raise _explain(e, "button.pin", "button") from e
    return button


def build_orb(settings: Settings, pin_factory: Any = None,
              spi: Any = None) -> OrbDriver | None:
    """The orb driver, or None for ``leds.driver: none``.

    Raises:
        ConfigError: naming the leds key at fault and what to do.
    """
    leds = settings.leds
    if leds.driver == "none":
        return None
    _quiet_fallback_warnings()
    if leds.driver == "gpio":
        from voiced.orb.gpio import GpioOrb

        try:
            return GpioOrb(leds, pin_factory)
        except Exception as e:  # noqa: BLE001
            raise _explain(e, "leds.pins", "leds") from e
    from voiced.orb.apa102 import Apa102Orb

    try:
        return Apa102Orb(leds, spi, pin_factory)
    except (FileNotFoundError, PermissionError, ImportError) as e:
        raise _explain(e, f"leds.spi_bus/spi_device (/dev/spidev{leds.spi_bus}."
                          f"{leds.spi_device})", "leds") from e
    except Exception as e:  # noqa: BLE001
        raise _explain(e, "leds.power_pin", "leds") from e
