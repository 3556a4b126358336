"""Strings an attacker, or an unlucky user, puts into names and paths: each would run a command, end a line
or be read as something else by a shell, cmd.exe, sbatch or Python if caffegen passed it on unquoted.

A string that runs something writes a file named PWNED in the working directory.
"""

HOSTILE = [
    "new\nline; touch PWNED", "carriage\rreturn", "line\u2028separator", "next\x85line", "$(touch PWNED)",
    "`touch PWNED`", "${IFS}touch${IFS}PWNED", "; touch PWNED #", "| touch PWNED", "&& touch PWNED",
    "' ; touch PWNED ; '", '" ; touch PWNED ; "', "a\\b", "trailing\\", "%PATH%", "100%%", "!PATH!",
    "^caret^", "& echo x > PWNED &", "| echo x > PWNED", "(parens) <angles>", "*", "~root", "-rf",
    " lead and trail ", "tab\there", "ctrl\x1az", "nul\0byte", "déjà vu ☃",
]
# What may be a file or folder name: anything but a slash or a NUL.
HOSTILE_NAMES = [text for text in HOSTILE if "/" not in text and "\0" not in text]


def pwned(folder):
    """The PWNED files under ``folder``: proof that a hostile string ran a command."""
    return sorted(path for path in folder.rglob("PWNED"))
