"""Aligned text tables for the terminal."""


def text_table(header, rows):
    """The lines of ``rows`` under ``header``, each column as wide as its widest cell."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
