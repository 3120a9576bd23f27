"""Thinking modes: on, off, and auto; Qwen's /think and /no_think soft switches.

The auto rule is plain and documented so that users can predict it. A message gets thinking when
any of these hold:
- it asks for math: digits joined by an operator (``2+2``, ``3 × 7``, ``３＋５``, ``x − 1 ≤ 2``),
  a math symbol (``√ ∑ ∏ ∫ ∂ ∞ ≠ ≤ ≥ ≈ ∈ ∀ ∃ ⇒``), a squared or cubed term (``x²``), or a
  math word: solve, calculate, prove, equation, integral, derivative, probability, "how many"...
  and the same in Chinese (证明, 计算, 求解, 方程, 积分, 导数, 概率, 多少, 根号, 无理数...),
  Japanese (証明, 計算, 方程式, 積分, 微分, 確率, いくつ...), Spanish, French and German
  (resuelve, calcula, demuestra, ecuación; résous, calcule, démontre, équation; löse, berechne,
  beweise, Gleichung...);
- it is about code: a code fence or inline code, code punctuation (``==``, ``!=``, ``&&``,
  ``||``, ``=>``, ``->``, ``::``, ``+=``, ``main()``, ``obj.method(``, ``#include``), or a code
  word: code, function, bug, error, debug, implement, algorithm, regex, SQL, Python, compile... and
  in the other five languages (代码, 函数, 程序, 调试, 报错, 算法; コード, 関数, バグ, デバッグ;
  código, función; fonction, erreur; Funktion, Fehler...);
- it asks for reasoning or several steps: why, explain, compare, analyze, plan, step by step,
  pros and cons, "what if", "how do/does/can/should/would" and the same in the other languages
  (为什么, 为何, 如何, 解释, 比较, 分析, 区别, 原理, 一步一步; なぜ, どうして, 説明, 比較, 違い;
  por qué, explica; pourquoi, explique; warum, erkläre...). Bare "how" is not a signal in any
  language ("how are you", 你怎么样, ¿cómo estás?), only "how" with a doing verb;
- it is long: more than 40 words, or more than 60 Chinese or Japanese characters (Han and kana,
  which are written without spaces, so a long Chinese message is one "word"); Korean, written
  with spaces, counts words;
- it asks several questions: two or more question marks, ASCII ``?``, full-width ``？`` or
  Arabic ``؟``.
Anything else (greetings, thanks, short factual questions such as "What is the capital of
France?" or 中国的首都是哪里？) gets the quick non-thinking answer. Latin-script words match
whole words, case-insensitively (also beside Han or kana: 用Python写); Chinese and Japanese
words match anywhere (no spaces to split on).
Other languages still get the signals that need no words: digits and operators, math symbols,
code, length and question marks.
"""

from __future__ import annotations

import re
from enum import Enum


class Mode(str, Enum):
    THINK = "think"
    NO_THINK = "no_think"
    AUTO = "auto"


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"    # kana and Han


def _signal(pattern: str, latin: str, cjk: str) -> re.Pattern[str]:
    """One regex: a language-free `pattern`, `latin` words as whole words, `cjk` words anywhere.
    A Latin word's edges are any character but a letter or digit of a spaced script, so that
    "用Python写" finds Python (Han characters are word characters to re's \\b)."""
    edge_l, edge_r = rf"(?<![^\W{_CJK}])", rf"(?![^\W{_CJK}])"
    parts = [p for p in (pattern, rf"{edge_l}(?:{latin}){edge_r}", cjk) if p]
    return re.compile("|".join(parts), re.IGNORECASE)


_SOFT_SWITCH = re.compile(r"/(no_think|think)\s*$")
_OPERATORS = "-+*/^=×÷−≠≤≥≈＋－＊／＝<>"
_MATH = _signal(
    rf"\d\s*[{_OPERATORS}]\s*\d|[√∑∏∫∂∞≠≤≥≈∈∉⊂⊆∀∃⇒⇔∴∵]|\w[²³]",
    # English
    "solve|calculate|compute|prove|proof|equation|integral|derivative|probability|how many|how much|percent|"
    "sum of|factor|"
    # Spanish, French, German
    "resuelve|resolver|calcula|calcular|demuestra|demostrar|ecuaci[oó]n|derivada|probabilidad|cu[aá]nt[oa]s?|"
    "r[ée]sous|r[ée]soudre|calcule|calculer|d[ée]montre|d[ée]montrer|prouve|prouver|[ée]quation|int[ée]grale|"
    "d[ée]riv[ée]e|probabilit[ée]|combien|"
    "löse|lösen|loese|loesen|berechne|berechnen|beweise|beweisen|gleichung|ableitung|wahrscheinlichkeit|wie viele?",
    # Chinese, Japanese
    "证明|計算|计算|求解|方程|积分|積分|导数|微分|概率|確率|多少|几个|百分之|根号|无理数|有理数|质数|素数|"
    "公式|定理|推导|証明|解いて|いくつ|何個|何人")
_CODE = _signal(
    r"```|`[^`]+`|==|!=|&&|\|\||=>|->|::|\+=|\w\(\)|\w\.\w+\(|#include",
    "code|function|bug|error|debug|implement|algorithm|regex|sql|python|javascript|rust|compile|script|class|"
    "refactor|stack trace|"
    "c[oó]digo|funci[oó]n|depurar|algoritmo|fonction|erreur|d[ée]boguer|algorithme|"
    "funktion|fehler|debuggen|algorithmus",
    "代码|函数|程序|编程|调试|报错|出错|异常|算法|编译|正则|脚本|コード|関数|プログラム|バグ|デバッグ|エラー|"
    "アルゴリズム|コンパイル|正規表現|スクリプト")
_REASONING = _signal(
    "",
    r"why|explain|compare|analy[sz]e|plan|step[- ]by[- ]step|pros and cons|what if|trade-?offs?|"
    r"how (?:do|does|can|should|would|could)|"
    r"por qu[ée]|explica|explicar|compara|comparar|analiza|analizar|paso a paso|ventajas y desventajas|"
    r"qu[ée] pasar[ií]a si|c[oó]mo (?:funciona|puedo|se hace|hago)|"
    r"pourquoi|explique|expliquer|comparer|analyser|[ée]tape par [ée]tape|avantages et inconv[ée]nients|"
    r"que se passerait-il si|comment (?:fonctionne|faire|puis-je)|"
    r"warum|wieso|weshalb|erkl[äa]re|erkl[äa]ren|vergleiche|vergleichen|analysiere|schritt f[üu]r schritt|"
    r"vor- und nachteile|was w[äa]re wenn|wie (?:funktioniert|kann ich)",
    "为什么|为何|如何|怎么做|怎么办|怎么实现|怎样才能|解释|比较|分析|区别|原理|一步一步|逐步|优缺点|利弊|会怎样|"
    "なぜ|どうして|説明|比較|分析|違い|どのように|どうやって|メリットとデメリット")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_QUESTION_MARKS = ("?", "？", "؟")
LONG_WORDS = 40
LONG_CJK_CHARS = 60


def soft_switch(text: str) -> Mode | None:
    """THINK or NO_THINK when the message ends with Qwen's /think or /no_think, else None."""
    m = _SOFT_SWITCH.search(text)
    if m is None:
        return None
    return Mode.NO_THINK if m.group(1) == "no_think" else Mode.THINK


def is_long(text: str) -> bool:
    """More than LONG_WORDS words, or more than LONG_CJK_CHARS Han and kana characters."""
    return len(text.split()) > LONG_WORDS or len(_CJK_CHAR.findall(text)) > LONG_CJK_CHARS


def auto_wants_thinking(text: str) -> bool:
    """The auto rule in the module docstring."""
    return bool(_MATH.search(text) or _CODE.search(text) or _REASONING.search(text) or is_long(text)
                or sum(text.count(q) for q in _QUESTION_MARKS) >= 2)


def thinking_for(mode: Mode, text: str) -> bool:
    """Whether a turn in `mode` thinks for this message."""
    if mode is Mode.AUTO:
        return auto_wants_thinking(text)
    return mode is Mode.THINK
