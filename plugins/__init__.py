"""Built-in backends. Each subpackage registers itself through the ``cosmos`` entry-point group,
exactly as a third-party backend would."""
