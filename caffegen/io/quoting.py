"""Text from inputs, quoted for the language of the file or line it goes into, or refused where it cannot be.

One function per target: POSIX shell words (train.sh, Slurm scripts, command lines shown to copy),
cmd.exe words (train.bat), values of ``#SBATCH`` lines, and Python string literals (the code in a
bundle's README). Comments in the scripts carry no input text at all.
"""

import shlex

from caffegen.errors import LINE_BREAKS, CaffegenError

# Characters cmd.exe cannot carry inside a quoted word: it ends a line at CR or LF, reads Ctrl-Z as the
# end of the file, and has no escape for a double quote inside double quotes.
_CONTROL = {chr(code) for code in range(32)} | {"\x7f"}


class CannotQuote(CaffegenError):
    """A text the target language cannot hold, whatever the quoting."""


def sh_word(text):
    """``text`` as one word of a POSIX shell (bash, sh): single-quoted where it needs to be."""
    text = str(text)
    if "\0" in text:
        raise CannotQuote(f"a NUL character cannot be part of a shell word: {text!r}")
    return shlex.quote(text)


def sh_command(*words):
    """A command line to show the user, each word quoted for the shell, so that it can be copied as it is."""
    return " ".join(sh_word(word) for word in words)


def bat_word(text, what):
    """``text`` as one double-quoted word of a batch file (``%`` doubled, as cmd expands it even in quotes).

    ``what`` names the text in the error, such as "the weights path".
    """
    text = str(text)
    bad = sorted({char for char in text if char in _CONTROL or char == '"'})
    if bad:
        raise CannotQuote(f"cmd.exe cannot take {what} {text!r} in a batch file: it holds "
                          f"{', '.join(_name(char) for char in bad)}")
    _encodable(text, what)
    return '"' + text.replace("%", "%%") + '"'


def sbatch_value(text, what):
    """``text`` as the value of an ``#SBATCH`` line, which sbatch reads up to the end of the line."""
    text = str(text)
    bad = sorted({char for char in text if char in _CONTROL or char in '"\\' or char in LINE_BREAKS})
    if bad:
        raise CannotQuote(f"an sbatch script cannot hold {what} {text!r}: it holds "
                          f"{', '.join(_name(char) for char in bad)}")
    return text


def python_string(text):
    """``text`` as a Python string literal."""
    return repr(str(text))


def _encodable(text, what):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CannotQuote(f"{what} {text!r} holds bytes that are not UTF-8, which a batch file cannot name") from None


def _name(char):
    names = {'"': "a double quote", "\\": "a backslash", "\n": "a line feed", "\r": "a carriage return",
             "\0": "a NUL", "\x1a": "Ctrl-Z"}
    return names.get(char, f"U+{ord(char):04X}")
