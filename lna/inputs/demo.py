"""The demo dataset (`--dataset demo`): parallel arithmetic word problems with worked
answers in the study's ten languages, generated deterministically (no download).

Row i is the same problem, with the same numbers, in every language, as in MGSM. The
answers are the responses that get force-decoded, so the demo counts real text of each
language and script, even through a random-weight model.
"""
import random

# (question, answer) templates per language for three kinds of problem.
TEMPLATES = {
    "en": [
        ("A boy has {a} apples and buys {b} more. How many apples does he have now?",
         "The boy had {a} apples and bought {b} more, so he has {a} + {b} = {c} apples. The answer is {c}."),
        ("A farmer collects {a} eggs every day and sells {b} of them. How many eggs are left each day?",
         "The farmer keeps {a} - {b} = {c} eggs each day. The answer is {c}."),
        ("A shelf holds {a} books. How many books do {b} shelves hold?",
         "Each shelf holds {a} books, so {b} shelves hold {b} × {a} = {c} books. The answer is {c}."),
    ],
    "zh": [
        ("一个男孩有{a}个苹果，又买了{b}个。他现在有多少个苹果？",
         "男孩原来有{a}个苹果，又买了{b}个，所以现在有{a} + {b} = {c}个苹果。答案是{c}。"),
        ("一位农民每天收集{a}个鸡蛋，卖掉其中{b}个。每天还剩多少个鸡蛋？",
         "农民每天剩下{a} - {b} = {c}个鸡蛋。答案是{c}。"),
        ("一个书架能放{a}本书。{b}个书架能放多少本书？",
         "每个书架放{a}本书，所以{b}个书架能放{b} × {a} = {c}本书。答案是{c}。"),
    ],
    "ru": [
        ("У мальчика {a} яблок, и он покупает ещё {b}. Сколько яблок у него теперь?",
         "У мальчика было {a} яблок, и он купил ещё {b}, поэтому у него {a} + {b} = {c} яблок. Ответ: {c}."),
        ("Фермер каждый день собирает {a} яиц и продаёт {b} из них. Сколько яиц остаётся каждый день?",
         "Каждый день у фермера остаётся {a} - {b} = {c} яиц. Ответ: {c}."),
        ("На одной полке помещается {a} книг. Сколько книг поместится на {b} полках?",
         "На каждой полке {a} книг, значит, на {b} полках {b} × {a} = {c} книг. Ответ: {c}."),
    ],
    "de": [
        ("Ein Junge hat {a} Äpfel und kauft {b} weitere. Wie viele Äpfel hat er jetzt?",
         "Der Junge hatte {a} Äpfel und kaufte {b} dazu, also hat er {a} + {b} = {c} Äpfel. Die Antwort ist {c}."),
        ("Ein Bauer sammelt jeden Tag {a} Eier und verkauft {b} davon. Wie viele Eier bleiben jeden Tag übrig?",
         "Dem Bauern bleiben jeden Tag {a} - {b} = {c} Eier. Die Antwort ist {c}."),
        ("Ein Regal fasst {a} Bücher. Wie viele Bücher fassen {b} Regale?",
         "Jedes Regal fasst {a} Bücher, also fassen {b} Regale {b} × {a} = {c} Bücher. Die Antwort ist {c}."),
    ],
    "fr": [
        ("Un garçon a {a} pommes et en achète {b} de plus. Combien de pommes a-t-il maintenant ?",
         "Le garçon avait {a} pommes et en a acheté {b}, donc il a {a} + {b} = {c} pommes. La réponse est {c}."),
        ("Un fermier ramasse {a} œufs chaque jour et en vend {b}. Combien d'œufs lui reste-t-il chaque jour ?",
         "Il reste au fermier {a} - {b} = {c} œufs chaque jour. La réponse est {c}."),
        ("Une étagère contient {a} livres. Combien de livres contiennent {b} étagères ?",
         "Chaque étagère contient {a} livres, donc {b} étagères contiennent {b} × {a} = {c} livres. La réponse est {c}."),
    ],
    "es": [
        ("Un niño tiene {a} manzanas y compra {b} más. ¿Cuántas manzanas tiene ahora?",
         "El niño tenía {a} manzanas y compró {b} más, así que tiene {a} + {b} = {c} manzanas. La respuesta es {c}."),
        ("Un granjero recoge {a} huevos cada día y vende {b} de ellos. ¿Cuántos huevos le quedan cada día?",
         "Al granjero le quedan {a} - {b} = {c} huevos cada día. La respuesta es {c}."),
        ("Un estante tiene {a} libros. ¿Cuántos libros tienen {b} estantes?",
         "Cada estante tiene {a} libros, así que {b} estantes tienen {b} × {a} = {c} libros. La respuesta es {c}."),
    ],
    "ja": [
        ("男の子はりんごを{a}個持っていて、さらに{b}個買います。今、りんごを何個持っていますか？",
         "男の子はりんごを{a}個持っていて、{b}個買ったので、{a} + {b} = {c}個持っています。答えは{c}です。"),
        ("農家は毎日卵を{a}個集め、そのうち{b}個を売ります。毎日卵は何個残りますか？",
         "毎日{a} - {b} = {c}個の卵が残ります。答えは{c}です。"),
        ("本棚1つに本が{a}冊入ります。本棚{b}つには何冊入りますか？",
         "本棚1つに{a}冊入るので、{b}つには{b} × {a} = {c}冊入ります。答えは{c}です。"),
    ],
    "sw": [
        ("Mvulana ana matufaha {a} na ananunua mengine {b}. Sasa ana matufaha mangapi?",
         "Mvulana alikuwa na matufaha {a} na akanunua mengine {b}, kwa hiyo ana {a} + {b} = {c}. Jibu ni {c}."),
        ("Mkulima hukusanya mayai {a} kila siku na kuuza {b} kati yake. Mayai mangapi hubaki kila siku?",
         "Kila siku mkulima hubakiwa na mayai {a} - {b} = {c}. Jibu ni {c}."),
        ("Rafu moja ina vitabu {a}. Rafu {b} zina vitabu vingapi?",
         "Kila rafu ina vitabu {a}, kwa hiyo rafu {b} zina vitabu {b} × {a} = {c}. Jibu ni {c}."),
    ],
    "th": [
        ("เด็กชายมีแอปเปิล {a} ผล และซื้อเพิ่มอีก {b} ผล ตอนนี้เขามีแอปเปิลกี่ผล",
         "เด็กชายมีแอปเปิล {a} ผล และซื้อเพิ่ม {b} ผล ดังนั้นเขามีแอปเปิล {a} + {b} = {c} ผล คำตอบคือ {c}"),
        ("ชาวนาเก็บไข่ได้วันละ {a} ฟอง และขายไป {b} ฟอง แต่ละวันเหลือไข่กี่ฟอง",
         "แต่ละวันชาวนาเหลือไข่ {a} - {b} = {c} ฟอง คำตอบคือ {c}"),
        ("ชั้นวางหนึ่งชั้นใส่หนังสือได้ {a} เล่ม ชั้นวาง {b} ชั้นใส่หนังสือได้กี่เล่ม",
         "ชั้นวางแต่ละชั้นใส่ได้ {a} เล่ม ดังนั้น {b} ชั้นใส่ได้ {b} × {a} = {c} เล่ม คำตอบคือ {c}"),
    ],
    "bn": [
        ("একটি ছেলের কাছে {a}টি আপেল আছে এবং সে আরও {b}টি কেনে। এখন তার কাছে কতগুলি আপেল আছে?",
         "ছেলেটির কাছে {a}টি আপেল ছিল এবং সে আরও {b}টি কিনেছে, তাই তার কাছে {a} + {b} = {c}টি আপেল আছে। উত্তর হল {c}।"),
        ("একজন কৃষক প্রতিদিন {a}টি ডিম সংগ্রহ করেন এবং তার মধ্যে {b}টি বিক্রি করেন। প্রতিদিন কতগুলি ডিম বাকি থাকে?",
         "প্রতিদিন কৃষকের কাছে {a} - {b} = {c}টি ডিম বাকি থাকে। উত্তর হল {c}।"),
        ("একটি তাকে {a}টি বই রাখা যায়। {b}টি তাকে কতগুলি বই রাখা যায়?",
         "প্রতিটি তাকে {a}টি বই রাখা যায়, তাই {b}টি তাকে {b} × {a} = {c}টি বই রাখা যায়। উত্তর হল {c}।"),
    ],
}
QUESTIONS_PER_LANGUAGE = 24


def records(n: int = QUESTIONS_PER_LANGUAGE, seed: int = 0) -> list[dict]:
    """Dataset records (lna.inputs.data JSONL schema): n parallel problems per language."""
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        kind = i % 3
        a, b = rng.randint(12, 95), rng.randint(2, 11)
        c = (a + b, a - b, a * b)[kind]
        problems.append((kind, a, b, c))
    out = []
    for lang, templates in TEMPLATES.items():
        for i, (kind, a, b, c) in enumerate(problems):
            q, r = templates[kind]
            out.append({"id": i, "lang": lang, "query": q.format(a=a, b=b), "answer": str(c),
                        "responses": [" " + r.format(a=a, b=b, c=c)]})
    return out
