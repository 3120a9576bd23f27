"""Auto mode in other languages than English (edge/protocol/modes.py's docstring states the rule): Chinese
and Japanese words, full-width question marks and character counts; Spanish, French and German
words; and the signals that need no words (digits and operators, math symbols, code)."""

from __future__ import annotations

import pytest

from edge.protocol.modes import LONG_CJK_CHARS, LONG_WORDS, Mode, auto_wants_thinking, thinking_for

THINKS = {
    "chinese": ["为什么天空是蓝色的？", "证明根号2是无理数", "用Python写一个快速排序", "1+1等于几？",
                "解方程 x²−5x+6=0", "比较一下苹果和安卓的优缺点", "三加五等于多少", "这段代码为什么报错",
                "如何学习英语", "这个SQL怎么写", "你好吗？你在哪里？"],
    "japanese": ["なぜ空は青いのですか？", "√2が無理数であることを証明してください", "Pythonでクイックソートの関数を書いて",
                 "東京と大阪の違いを説明して", "りんごはいくつありますか", "元気？どこにいるの？"],
    "spanish": ["¿Por qué el cielo es azul?", "Resuelve la ecuación 2x + 3 = 7", "Explica paso a paso el protocolo TCP",
                "¿Cuántos números primos hay menores que cien?", "Mi código no compila", "¿Cómo funciona un motor?"],
    "french": ["Pourquoi le ciel est-il bleu ?", "Résous l'équation x + 2 = 5", "Démontre que racine de deux est irrationnel",
               "Combien de jours dans une année bissextile ?", "Quels sont les avantages et inconvénients du nucléaire ?"],
    "german": ["Warum ist der Himmel blau?", "Berechne siebzehn mal dreiundzwanzig",
               "Erkläre mir Schritt für Schritt einen Motor", "Wie viele Tage hat ein Schaltjahr?",
               "Löse die Gleichung", "Vor- und Nachteile von Solarstrom"],
    "code": ["if (a && b) ne marche pas", "foo.bar( ne marche pas", "warum gibt main() nichts aus",
             "```\nprint(1)\n```", "#include <stdio.h> 是什么", "x == y とは", "a => b", "Std::vector"],
    "math symbols": ["3 × 7", "12 ÷ 4", "x − 1 ≤ 2", "∫ sin x dx", "∑ k", "a ≠ b", "９＋１０", "２ × ３",
                     "२ + २", "٢ + ٢", "x² dx", "Сколько будет 2+2?"],
}
QUICK = {
    "chinese": ["你好", "谢谢", "中国的首都是哪里？", "你怎么样？", "讲个笑话", "早上好！"],
    "japanese": ["こんにちは", "ありがとう", "日本の首都はどこですか？", "おはようございます"],
    "spanish": ["Hola, ¿qué tal?", "¿Cómo estás?", "Gracias", "¿Cuál es la capital de Francia?"],
    "french": ["Bonjour, ça va ?", "Merci beaucoup", "Quelle est la capitale de la France ?", "Et si on dînait ?"],
    "german": ["Guten Morgen!", "Danke schön", "Wie heißt die Hauptstadt von Frankreich?", "Wie geht es dir?"],
    "english look-alikes": ["Don't lose hope", "I love classic music", "Look at that planet", "Hi (again)"],
    "other scripts": ["Привет!", "안녕하세요", "Γεια σου", "مرحبا"],
}


@pytest.mark.parametrize("text", [t for texts in THINKS.values() for t in texts])
def test_thinks(text):
    assert auto_wants_thinking(text)


@pytest.mark.parametrize("text", [t for texts in QUICK.values() for t in texts])
def test_answers_quickly(text):
    assert not auto_wants_thinking(text)


def test_issue_examples_in_auto_mode():
    assert thinking_for(Mode.AUTO, "为什么天空是蓝色的？") and thinking_for(Mode.AUTO, "证明根号2是无理数")
    assert not thinking_for(Mode.AUTO, "你好")


def test_full_width_and_arabic_question_marks_count():
    assert auto_wants_thinking("你好吗？你在哪里？") and not auto_wants_thinking("你在哪里？")
    assert auto_wants_thinking("كيف حالك؟ أين أنت؟") and not auto_wants_thinking("أين أنت؟")
    assert auto_wants_thinking("Hallo? Wo bist du？")


SENTENCE = "我今天去了公园看到很多花"            # 12 Han characters, no signal word


def test_chinese_length_counts_characters_not_words():
    assert len(SENTENCE) * 5 == LONG_CJK_CHARS == 60
    at_limit, over = SENTENCE * 5, SENTENCE * 5 + "啊"
    assert len(at_limit.split()) == 1                           # no spaces: one "word"
    assert not auto_wants_thinking(at_limit) and auto_wants_thinking(over)
    # punctuation is no character of the count
    assert not auto_wants_thinking("，".join([SENTENCE] * 5) + "。")


def test_japanese_length_counts_kana_and_han():
    kana = ("きょうはこうえんにいってはなをみました" * 4)[:LONG_CJK_CHARS]     # 60 hiragana
    assert not auto_wants_thinking(kana) and auto_wants_thinking(kana + "ね")
    assert auto_wants_thinking("カタカナ" * 16) and not auto_wants_thinking("カタカナ" * 15)


def test_korean_is_spaced_and_counts_words():
    assert not auto_wants_thinking(" ".join(["안녕하세요"] * LONG_WORDS))      # 200 Hangul, 40 words
    assert auto_wants_thinking(" ".join(["안녕하세요"] * (LONG_WORDS + 1)))
