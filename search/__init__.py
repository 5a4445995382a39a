"""attntune subpackage."""
