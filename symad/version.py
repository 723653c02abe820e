"""symad's version (pyproject.toml's), in a module of its own so that modules below the
package (the disk cache keys code by it) need not import the package."""

__version__ = "0.1.0"
