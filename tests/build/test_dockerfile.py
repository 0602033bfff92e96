"""The Dockerfile parser and the variable expansion, on the awkward cases (no root)."""

from __future__ import annotations

import pytest

from engine.build.dockerfile import DockerfileError, Lexer, parse, split_words
from engine.errors import InvalidArgument


def cmds(text: str) -> list[tuple[str, list[str]]]:
    return [(i.cmd, i.args) for i in parse(text).instructions]


def test_comments_blank_lines_and_case_insensitive_names() -> None:
    df = parse("# a comment\n\nfrom busybox\n  # indented comment\nrun echo hi\nCmd [\"sh\"]\n")
    assert [(i.cmd, i.line) for i in df.instructions] == [("from", 3), ("run", 5), ("cmd", 6)]
    assert df.instructions[2].json and df.instructions[2].args == ["sh"]


def test_line_continuations_join_without_newline_and_skip_comment_lines() -> None:
    df = parse("FROM busybox\nRUN echo a \\\n# a comment inside\n\n    && echo b\nENV A=1 \\\n  B=2\n")
    run = df.instructions[1]
    assert run.original == "RUN echo a     && echo b"
    assert run.args == ["echo a     && echo b"]
    assert run.line == 2
    assert df.instructions[2].args == ["A=1", "B=2"]


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN dir c:\\ `\n  && echo x\n")
    assert df.escape == "`"
    assert df.instructions[1].args == ["dir c:\\   && echo x"]
    # not at the top: an ordinary comment
    df = parse("FROM busybox\n# escape=`\nRUN echo a \\\n b\n")
    assert df.escape == "\\"
    assert df.instructions[1].args == ["echo a  b"]


def test_bad_escape_directive() -> None:
    with pytest.raises(DockerfileError, match="invalid escape token"):
        parse("# escape=x\nFROM busybox\n")


def test_exec_and_shell_forms() -> None:
    df = parse('FROM busybox\nRUN ["echo", "a b"]\nRUN [not json\nENTRYPOINT echo x\nCMD ["a", 1]\n')
    run_exec, run_shell, entry, cmd = df.instructions[1:]
    assert run_exec.json and run_exec.args == ["echo", "a b"]
    assert not run_shell.json and run_shell.args == ["[not json"]
    assert not entry.json and entry.args == ["echo x"]
    assert not cmd.json  # a list with a number is not an exec form: a shell command


def test_unknown_instruction_names_the_line() -> None:
    with pytest.raises(DockerfileError, match="dockerfile parse error line 3: unknown instruction: FOO"):
        parse("FROM busybox\n\nfoo bar\n")


def test_shell_requires_json_and_env_requires_arguments() -> None:
    with pytest.raises(DockerfileError, match="line 2: SHELL requires the arguments to be in JSON form"):
        parse("FROM busybox\nSHELL sh -c\n")
    with pytest.raises(DockerfileError, match="line 2: ENV requires at least one argument"):
        parse("FROM busybox\nENV\n")
    with pytest.raises(DockerfileError, match="COPY requires at least two arguments"):
        parse("FROM busybox\nCOPY onlyone\n")


def test_buildkit_only_flags_are_refused_in_dockerds_words() -> None:
    with pytest.raises(InvalidArgument, match="the --mount option requires BuildKit"):
        parse("FROM busybox\nRUN --mount=type=cache,target=/x true\n")
    with pytest.raises(DockerfileError, match="line 2: unknown flag: nope"):
        parse("FROM busybox\nCOPY --nope=1 a b\n")


def test_flags_and_stage_names() -> None:
    df = parse("FROM --platform=linux/amd64 busybox AS Build\nCOPY --from=build --chown=1:2 a /b/\n")
    frm, copy = df.instructions
    assert frm.flags == {"platform": "linux/amd64"} and frm.args == ["busybox", "build"]
    assert copy.flags == {"from": "build", "chown": "1:2"} and copy.args == ["a", "/b/"]
    with pytest.raises(DockerfileError, match='invalid name for build stage: "Bad!"'):
        parse("FROM busybox AS Bad!\n")
    with pytest.raises(DockerfileError, match="FROM requires either one or three arguments"):
        parse("FROM busybox AS\n")


def test_env_forms() -> None:
    assert cmds('FROM x\nENV A=1 B="two words" C=three\\ words\n')[1] == (
        "env", ["A=1", 'B="two words"', "C=three\\ words"])
    assert cmds("FROM x\nENV LEGACY value with  spaces\n")[1] == ("env", ["LEGACY=value with  spaces"])
    with pytest.raises(DockerfileError, match="can't find = in"):
        parse("FROM x\nENV A=1 B\n")


def test_arg_before_from_and_stages() -> None:
    df = parse("ARG BASE=busybox\nARG V\nFROM $BASE AS one\nRUN true\nFROM one\nARG V\n")
    assert [i.args for i in df.meta_args()] == [["BASE=busybox"], ["V"]]
    stages = df.stages()
    assert [[i.cmd for i in s] for s in stages] == [["from", "run"], ["from", "arg"]]


def test_healthcheck() -> None:
    df = parse('FROM x\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\nHEALTHCHECK NONE\n'
               'HEALTHCHECK CMD ["true"]\n')
    shell, none, exec_ = df.instructions[1:]
    assert shell.flags == {"interval": "5s", "retries": "3"} and shell.args == ["CMD-SHELL", "curl -f http://x/"]
    assert none.args == ["NONE"]
    assert exec_.args == ["CMD", "true"]


def test_split_words_keeps_quotes() -> None:
    assert split_words('a "b c" \'d e\' f\\ g') == ["a", '"b c"', "'d e'", "f\\ g"]


@pytest.mark.parametrize(("text", "expected"), [
    ("$A", "1"),
    ("${A}x", "1x"),
    ("$Ax", ""),
    ("${UNSET:-def}", "def"),
    ("${EMPTY:-def}", "def"),
    ("${EMPTY-def}", ""),
    ("${A:+set}", "set"),
    ("${UNSET:+set}", ""),
    ("${UNSET:-$A$A}", "11"),
    ("'$A'", "$A"),
    ('"$A and \\$A"', "1 and $A"),
    ("\\$A", "$A"),
    ("a$", "a$"),
    ("$1", ""),
    ('"quoted \'single\'"', "quoted 'single'"),
])
def test_expansion(text: str, expected: str) -> None:
    assert Lexer().word(text, {"A": "1", "EMPTY": ""}) == expected


def test_expansion_words_do_not_split_values() -> None:
    assert Lexer().words('a "b c" $X', {"X": "p q"}) == ["a", "b c", "p q"]


def test_expansion_with_backtick_escape() -> None:
    assert Lexer("`").word("`$A \\$A", {"A": "1"}) == "$A \\1"


def test_expansion_errors() -> None:
    with pytest.raises(InvalidArgument, match="matching double-quote"):
        Lexer().word('"open', {})
    with pytest.raises(InvalidArgument, match="missing '}'"):
        Lexer().word("${A", {})
    with pytest.raises(InvalidArgument, match="X: must be set"):
        Lexer().word("${X:?must be set}", {})
