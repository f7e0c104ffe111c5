"""Hand-written responses in the styles real models answer in, with what a reader takes from them.

Each math entry is (response, gold, rule, correct): `rule` is the extraction
rule that should find the answer (None: the response states none, under
strict extraction), `correct` whether a reader would mark it right against
`gold`. Entries marked FLEXIBLE are read with flexible extraction. The MCQ
entries are (response, gold letter, rule, correct).
"""

FLEXIBLE = "flexible"

MATH = [
    # --- \boxed{} (MATH-style, Qwen / DeepSeek "put your final answer within \boxed{}") -------------
    ("We add: $3 + 4 = 7$. So the answer is $\\boxed{7}$.", "7", "boxed", True),
    ("Therefore, the final answer is: $\\boxed{\\frac{3}{4}}$", "0.75", "boxed", True),
    ("The roots are 2 and 3, so their sum is \\boxed{5}.", "5", "boxed", True),
    ("\\[ x = \\boxed{-12} \\]", "-12", "boxed", True),
    ("First guess \\boxed{10}, but checking again, \\boxed{12}.", "12", "boxed", True),
    ("The area is $\\boxed{16\\pi}$ square units.", "16\\pi", "boxed", True),
    ("Thus $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", "boxed", True),
    ("The total cost is \\boxed{\\$1,250}.", "1250", "boxed", True),
    ("So she pays \\boxed{18 \\text{ dollars}}.", "18", "boxed", True),
    ("The angle measures \\boxed{30^\\circ}.", "30", "boxed", True),
    ("The probability is \\boxed{25\\%}.", "25", "boxed", True),
    ("Hence the answer is \\boxed{2\\sqrt{3}}.", "2\\sqrt{3}", "boxed", True),
    ("$$\\boxed{x^2 + 2x + 1}$$", "(x+1)^2", "boxed", True),
    ("The answer is \\boxed{(2, -1)}.", "(2,-1)", "boxed", True),
    ("We get \\boxed{0.5}", "\\frac{1}{2}", "boxed", True),
    ("\\boxed{1{,}000}", "1000", "boxed", True),  # LaTeX's thousands separator
    ("So the sum is \\boxed{6}. Answer: 7", "7", "boxed", False),  # a box beats an Answer line
    ("The value is \\boxed{-\\frac{5}{2}}.", "-2.5", "boxed", True),
    ("Final answer: \\boxed{9}", "9", "boxed", True),
    ("Simplifying gives \\boxed{\\sqrt{2}}.", "\\frac{2}{\\sqrt{2}}", "boxed", True),
    ("So $n = \\boxed{42}$", "43", "boxed", False),
    ("\\fbox{15}", "15", "boxed", True),
    ("Answer inside box: \\boxed{ 8 }", "8", "boxed", True),
    ("The final result is $\\boxed{\\text{(C)}}$", "C", "boxed", True),
    ("\\boxed{3.50}", "3.5", "boxed", True),
    # --- Answer: lines ---------------------------------------------------------------------------------
    ("Step 1: 12 * 3 = 36.\nStep 2: 36 + 6 = 42.\nAnswer: 42", "42", "answer_line", True),
    ("**Answer:** 17", "17", "answer_line", True),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", "answer_line", True),
    ("Final Answer: The final answer is 5. I hope it is correct.", "5", "answer_line", True),
    ("ANSWER: 1,024", "1024", "answer_line", True),
    ("answer: $18.", "18", "answer_line", True),
    ("Answer: 25%", "25", "answer_line", True),
    ("Answer: x = 4", "4", "answer_line", True),  # math-verify reads the value of an equation
    ("Answer: 3 \\sqrt{2}", "3\\sqrt{2}", "answer_line", True),
    ("Answer: -7", "7", "answer_line", False),
    ("> **Final answer:** 64", "64", "answer_line", True),
    ("Answer: 12 apples.", "12", "answer_line", True),
    ("Answer: 1/3", "\\frac{1}{3}", "answer_line", True),
    ("Answer: 0.333", "\\frac{1}{3}", "answer_line", False),
    ("Answer: 10\nWait, I made an error.\nAnswer: 11", "11", "answer_line", True),
    ("Answer: \u22125", "-5", "answer_line", True),  # a unicode minus sign
    ("Answer: 2.50 dollars", "2.5", "answer_line", True),
    ("Answer: $\\frac{7}{8}$", "0.875", "answer_line", True),
    ("Answer: 100 km/h", "100", "answer_line", True),
    ("Answer: 3, 4", "3", "answer_line", False),  # two numbers are not the one asked for
    # --- "the answer is" in prose --------------------------------------------------------------------
    ("89-2-3+2 = 11\n\nThe answer is 11.", "86", "answer_is", False),
    ("89-2-3+2 = 86\n\nThe answer is 86.", "86", "answer_is", True),
    ("So the final answer is 72.", "72", "answer_is", True),
    ("The answer is $18.", "18", "answer_is", True),
    ("The answer is: **42**", "42", "answer_is", True),
    ("Therefore, the answer is 1,000 apples, and she keeps none.", "1000", "answer_is", True),
    ("Thus the answer is -5.", "-5", "answer_is", True),
    ("I think the answer is 3/4.", "0.75", "answer_is", True),
    ("The answer is $\\frac{\\pi}{2}$.", "\\frac{\\pi}{2}", "answer_is", True),
    ("The answer is x + 1. Done.", "x+1", "answer_is", True),
    ("Hence the answer is 3 \\pi.", "3\\pi", "answer_is", True),
    ("So, the answer is 7 hours", "7", "answer_is", True),
    ("The answer is 7 hours", "8", "answer_is", False),
    ("My final answer is 0.25", "\\frac{1}{4}", "answer_is", True),
    ("The correct answer is 15 meters.", "15", "answer_is", True),
    ("Adding these, we get 20. The answer is 20", "20", "answer_is", True),
    ("The answer is 5. Actually, recounting, the answer is 6.", "6", "answer_is", True),
    ("the answer is `48`", "48", "answer_is", True),
    ("The answer is 2.5%.", "2.5", "answer_is", True),
    ("So the answer is **$3.75**.", "3.75", "answer_is", True),
    ("The answer is 1,234,567.", "1234567", "answer_is", True),
    ("The answer is 9 (nine).", "9", "answer_is", True),
    ("The answer is \\sqrt{5}.", "\\sqrt{5}", "answer_is", True),
    # --- GSM8K #### -------------------------------------------------------------------------------------
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72", "gsm8k", True),
    ("She earns 12 * 50 = 600 dollars.\n#### 600", "600", "gsm8k", True),
    ("#### 1,000", "1000", "gsm8k", True),
    ("Total: 5 + 5 = 10\n#### 10", "11", "gsm8k", False),
    ("#### -3", "-3", "gsm8k", True),
    ("####5", "5", "gsm8k", True),
    ("18 * 2 = 36\n#### 36.00", "36", "gsm8k", True),
    ("#### $42", "42", "gsm8k", True),
    ("#### 4\n#### 5", "5", "gsm8k", True),
    # --- no stated answer: strict extraction finds nothing --------------------------------------------
    ("I think it is 64", "64", None, False),
    ("Let me compute: 3 + 4 = 7", "7", None, False),
    ("I am not sure how to solve this problem.", "7", None, False),
    ("", "1", None, False),
    ("The result must be positive.", "1", None, False),
    ("\\boxed{}", "0", None, False),
    ("Answer:", "3", None, False),
    ("The answer is", "3", None, False),
    ("####", "3", None, False),
    # --- flexible extraction: the last number -------------------------------------------------------
    (FLEXIBLE, "I think it is 64", "64", "last_number", True),
    (FLEXIBLE, "Let me compute: 3 + 4 = 7", "7", "last_number", True),
    (FLEXIBLE, "First 12 then 15, so 27 in total.", "27", "last_number", True),
    (FLEXIBLE, "The total comes to 1,250 dollars", "1250", "last_number", True),
    (FLEXIBLE, "It drops to -4 degrees", "-4", "last_number", True),
    (FLEXIBLE, "We need 3.5 cups", "3.5", "last_number", True),
    (FLEXIBLE, "She has 5 apples and buys 3 more for 2 dollars each", "8", "last_number", False),
    (FLEXIBLE, "No numbers here at all.", "8", None, False),
    (FLEXIBLE, "The answer is 9.\nCheck: 3 * 3 = 9", "9", "answer_is", True),  # a stated answer still wins
    (FLEXIBLE, "\\boxed{4} and then 5", "4", "boxed", True),
    (FLEXIBLE, "After \u22123 and 2 we end at \u22121", "-1", "last_number", True),
]

MCQ = [
    ("The answer is (B).", "B", "answer_is", True),
    ("Answer: C", "C", "answer_is", True),
    ("**Final Answer:** D", "D", "answer_is", True),
    ("Putting it together, $\\boxed{A}$", "A", "boxed", True),
    ("\\boxed{\\text{B}}", "B", "boxed", True),
    ("The correct option is (C), since the others fail.", "C", "paren", True),
    ("Only (A) satisfies both conditions.", "B", "paren", False),
    ("B) is correct because 4 > 3.", "B", "letter_paren", True),
    ("I would pick D) here.", "D", "letter_paren", True),
    ("Comparing the options carefully, the best one is\n\nC", "C", "last_letter", True),
    ("After checking each choice: A.", "A", "last_letter", True),
    ("Let me think... **D**", "D", "last_letter", True),
    ("(A) and (C) both look plausible.", "A", None, False),
    ("A) is wrong and C) is right", "C", None, False),
    ("I cannot decide.", "A", None, False),
    ("The answer is A or C", "A", None, False),
    ("Answer: (B)\nBecause (A) and (C) contradict the premise.", "B", "answer_is", True),
    ("The answer is a tough one, I would say (D)", "D", None, False),  # the article ends the statement
    ("so the correct answer is: (C)", "C", "answer_is", True),
    ("\\boxed{B} Answer: C", "B", "boxed", True),
]
