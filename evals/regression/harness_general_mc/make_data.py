"""Writes harness_general_mc.jsonl from the hand-written items below.

    python evals/regression/harness_general_mc/make_data.py

Deterministic: the answer's position among the four options comes from a fixed-seed RNG, so
rerunning reproduces the committed JSONL byte for byte. Editing an item changes the data: bump
`metadata.version` in harness_general_mc.yaml.
"""

import json
import random
from pathlib import Path

SEED = 1234
OUT = Path(__file__).with_name("harness_general_mc.jsonl")

# (category, question, correct answer, three wrong answers). Facts a small instruct model is
# expected to know; the wrong answers are the same kind of thing and plainly wrong. One per line.
# fmt: off
ITEMS: list[tuple[str, str, str, str, str, str]] = [
    # capitals of large or well-known countries
    ("capitals", "What is the capital of France?", "Paris", "Berlin", "Madrid", "Rome"),
    ("capitals", "What is the capital of Germany?", "Berlin", "Paris", "Vienna", "Warsaw"),
    ("capitals", "What is the capital of Italy?", "Rome", "Milan", "Athens", "Lisbon"),
    ("capitals", "What is the capital of Spain?", "Madrid", "Lisbon", "Rome", "Paris"),
    ("capitals", "What is the capital of Japan?", "Tokyo", "Beijing", "Seoul", "Bangkok"),
    ("capitals", "What is the capital of China?", "Beijing", "Tokyo", "Seoul", "Hanoi"),
    ("capitals", "What is the capital of the United Kingdom?", "London", "Dublin", "Paris", "Edinburgh"),
    ("capitals", "What is the capital of Russia?", "Moscow", "Kyiv", "Warsaw", "Minsk"),
    ("capitals", "What is the capital of Egypt?", "Cairo", "Nairobi", "Tunis", "Baghdad"),
    ("capitals", "What is the capital of Greece?", "Athens", "Rome", "Istanbul", "Sofia"),
    ("capitals", "What is the capital of Canada?", "Ottawa", "Toronto", "Vancouver", "Chicago"),
    ("capitals", "What is the capital of Australia?", "Canberra", "Sydney", "Auckland", "Perth"),
    ("capitals", "What is the capital of the United States?", "Washington, D.C.", "New York City", "Los Angeles", "Chicago"),
    ("capitals", "What is the capital of India?", "New Delhi", "Mumbai", "Karachi", "Dhaka"),
    ("capitals", "What is the capital of Mexico?", "Mexico City", "Madrid", "Havana", "Lima"),
    ("capitals", "What is the capital of Argentina?", "Buenos Aires", "Santiago", "Lima", "Madrid"),
    ("capitals", "What is the capital of Portugal?", "Lisbon", "Madrid", "Porto", "Rome"),
    ("capitals", "What is the capital of Ireland?", "Dublin", "London", "Belfast", "Glasgow"),
    ("capitals", "What is the capital of Norway?", "Oslo", "Stockholm", "Helsinki", "Copenhagen"),
    ("capitals", "What is the capital of Sweden?", "Stockholm", "Oslo", "Helsinki", "Berlin"),
    ("capitals", "What is the capital of South Korea?", "Seoul", "Tokyo", "Beijing", "Pyongyang"),
    ("capitals", "What is the capital of Turkey?", "Ankara", "Athens", "Tehran", "Cairo"),
    ("capitals", "What is the capital of Kenya?", "Nairobi", "Cairo", "Lagos", "Accra"),
    ("capitals", "What is the capital of Austria?", "Vienna", "Berlin", "Prague", "Budapest"),
    ("capitals", "What is the capital of Peru?", "Lima", "Bogota", "Quito", "Santiago"),
    # geography
    ("geography", "What is the largest ocean on Earth?", "The Pacific Ocean", "The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean"),
    ("geography", "On which continent is Egypt?", "Africa", "Europe", "South America", "Australia"),
    ("geography", "On which continent is Brazil?", "South America", "Africa", "Europe", "Asia"),
    ("geography", "On which continent is France?", "Europe", "Asia", "Africa", "South America"),
    ("geography", "On which continent is Japan?", "Asia", "Europe", "Africa", "South America"),
    ("geography", "What is the largest desert in Africa?", "The Sahara", "The Gobi", "The Mojave", "The Atacama"),
    ("geography", "What is the highest mountain in the world?", "Mount Everest", "Mount Kilimanjaro", "Mont Blanc", "Mount Fuji"),
    ("geography", "Which river flows through Egypt?", "The Nile", "The Amazon", "The Thames", "The Mississippi"),
    ("geography", "Which river flows through London?", "The Thames", "The Nile", "The Seine", "The Danube"),
    ("geography", "Which river flows through Paris?", "The Seine", "The Thames", "The Nile", "The Amazon"),
    ("geography", "What is the largest country in the world by area?", "Russia", "Italy", "Mexico", "Japan"),
    ("geography", "In which country is the Eiffel Tower?", "France", "Italy", "Germany", "Spain"),
    ("geography", "In which country are the pyramids of Giza?", "Egypt", "Mexico", "Greece", "India"),
    ("geography", "In which country is the Great Wall?", "China", "India", "Japan", "Egypt"),
    ("geography", "In which country is the Colosseum?", "Italy", "Greece", "France", "Spain"),
    ("geography", "In which city is the Statue of Liberty?", "New York City", "Los Angeles", "Chicago", "Boston"),
    ("geography", "In which country is the Taj Mahal?", "India", "Egypt", "China", "Turkey"),
    ("geography", "Which continent is the coldest?", "Antarctica", "Africa", "Australia", "South America"),
    ("geography", "Which country has the largest population in South America?", "Brazil", "Chile", "Uruguay", "Paraguay"),
    ("geography", "What language is mainly spoken in Brazil?", "Portuguese", "Spanish", "French", "German"),
    ("geography", "What language is mainly spoken in Mexico?", "Spanish", "Portuguese", "French", "English"),
    ("geography", "What language is mainly spoken in Germany?", "German", "French", "Spanish", "Italian"),
    ("geography", "What language is mainly spoken in Japan?", "Japanese", "Chinese", "Korean", "Hindi"),
    ("geography", "What is the currency of Japan?", "The yen", "The euro", "The dollar", "The rupee"),
    ("geography", "What is the currency of the United States?", "The dollar", "The euro", "The yen", "The pound"),
    # basic science
    ("science", "What do plants need from the sun to make food?", "Light", "Sound", "Wind", "Snow"),
    ("science", "What gas do humans need to breathe in to live?", "Oxygen", "Helium", "Carbon monoxide", "Neon"),
    ("science", "What gas do plants take in from the air?", "Carbon dioxide", "Helium", "Neon", "Hydrogen sulfide"),
    ("science", "What is the chemical formula of water?", "H2O", "CO2", "NaCl", "O3"),
    ("science", "What is the center of an atom called?", "The nucleus", "The shell", "The orbit", "The crust"),
    ("science", "What is the closest star to the Earth?", "The Sun", "Sirius", "Polaris", "Vega"),
    ("science", "Which planet is known as the Red Planet?", "Mars", "Venus", "Jupiter", "Neptune"),
    ("science", "What is the largest planet in our solar system?", "Jupiter", "Mars", "Mercury", "Venus"),
    ("science", "Which planet is closest to the Sun?", "Mercury", "Neptune", "Jupiter", "Saturn"),
    ("science", "Which planet do we live on?", "Earth", "Mars", "Jupiter", "Saturn"),
    ("science", "What is the natural satellite of the Earth called?", "The Moon", "The Sun", "Mars", "A comet"),
    ("science", "Which planet has large, bright rings?", "Saturn", "Mercury", "Mars", "Earth"),
    ("science", "What force pulls objects toward the ground?", "Gravity", "Magnetism", "Friction", "Electricity"),
    ("science", "At what temperature in Celsius does water freeze?", "0 degrees", "100 degrees", "50 degrees", "-40 degrees"),
    ("science", "At what temperature in Celsius does water boil at sea level?", "100 degrees", "0 degrees", "50 degrees", "20 degrees"),
    ("science", "What is frozen water called?", "Ice", "Steam", "Sand", "Smoke"),
    ("science", "What is water vapor that you can see above boiling water called?", "Steam", "Ice", "Snow", "Sand"),
    ("science", "Which organ pumps blood through the human body?", "The heart", "The lungs", "The liver", "The stomach"),
    ("science", "Which organ do humans use to breathe?", "The lungs", "The heart", "The liver", "The kidneys"),
    ("science", "Which organ is used for thinking?", "The brain", "The heart", "The stomach", "The liver"),
    ("science", "Which mineral makes human bones hard?", "Calcium", "Gold", "Silver", "Plastic"),
    ("science", "What do bees make?", "Honey", "Milk", "Silk", "Wool"),
    ("science", "What do caterpillars turn into?", "Butterflies", "Spiders", "Bees", "Worms"),
    ("science", "What do tadpoles grow into?", "Frogs", "Fish", "Snakes", "Birds"),
    ("science", "What metal is attracted to a magnet?", "Iron", "Gold", "Aluminum", "Copper"),
    ("science", "What kind of energy does a solar panel collect?", "Energy from sunlight", "Energy from wind", "Energy from coal", "Energy from waves"),
    ("science", "What does a thermometer measure?", "Temperature", "Weight", "Length", "Time"),
    ("science", "What does a compass show?", "Direction", "Temperature", "Time", "Weight"),
    ("science", "Which is the largest mammal?", "The blue whale", "The mouse", "The cat", "The rabbit"),
    ("science", "What is the main gas in the air we breathe?", "Nitrogen", "Helium", "Chlorine", "Neon"),
    ("science", "Which part of a plant takes in water from the soil?", "The roots", "The flowers", "The fruit", "The petals"),
    ("science", "What green substance in leaves helps plants make food?", "Chlorophyll", "Hemoglobin", "Keratin", "Insulin"),
    ("science", "What is the boiling liquid rock that comes out of a volcano called?", "Lava", "Ice", "Sand", "Clay"),
    ("science", "What causes day and night on Earth?", "The Earth spinning on its axis", "The Moon blocking the Sun", "Clouds covering the sky", "The Sun turning off"),
    ("science", "What kind of animal is a dolphin?", "A mammal", "A fish", "A reptile", "An insect"),
    ("science", "What kind of animal is a snake?", "A reptile", "A mammal", "A bird", "An insect"),
    ("science", "What kind of animal is an eagle?", "A bird", "A fish", "A reptile", "A mammal"),
    ("science", "How many legs does an insect have?", "Six", "Eight", "Ten", "Two"),
    ("science", "How many legs does a spider have?", "Eight", "Six", "Four", "Two"),
    ("science", "What do we call an animal that eats only plants?", "A herbivore", "A carnivore", "A predator", "A parasite"),
    ("science", "What do we call an animal that eats only meat?", "A carnivore", "A herbivore", "A vegetarian", "A plant"),
    ("science", "Which sense do we use our ears for?", "Hearing", "Sight", "Smell", "Taste"),
    ("science", "Which sense do we use our eyes for?", "Sight", "Hearing", "Smell", "Taste"),
    ("science", "Which sense do we use our nose for?", "Smell", "Sight", "Hearing", "Touch"),
    # animals and nature
    ("nature", "What do cows give us to drink?", "Milk", "Juice", "Coffee", "Tea"),
    ("nature", "Which animal is known as the king of the jungle?", "The lion", "The mouse", "The rabbit", "The sheep"),
    ("nature", "Which animal has a very long neck?", "The giraffe", "The pig", "The rabbit", "The mouse"),
    ("nature", "Which animal has a trunk?", "The elephant", "The cat", "The dog", "The horse"),
    ("nature", "Which bird cannot fly and lives in Antarctica?", "The penguin", "The eagle", "The sparrow", "The parrot"),
    ("nature", "What do pandas mostly eat?", "Bamboo", "Fish", "Meat", "Insects"),
    ("nature", "What animal says \"moo\"?", "A cow", "A cat", "A dog", "A duck"),
    ("nature", "What animal says \"meow\"?", "A cat", "A cow", "A dog", "A sheep"),
    ("nature", "What animal barks?", "A dog", "A cat", "A fish", "A cow"),
    ("nature", "Where do fish live?", "In water", "In trees", "In the desert", "In the sky"),
    ("nature", "What does a hen lay?", "Eggs", "Milk", "Wool", "Honey"),
    ("nature", "What is a baby cat called?", "A kitten", "A puppy", "A calf", "A foal"),
    ("nature", "What is a baby dog called?", "A puppy", "A kitten", "A calf", "A chick"),
    ("nature", "What color are most leaves in summer?", "Green", "Blue", "Purple", "Black"),
    ("nature", "What color is the sky on a clear day?", "Blue", "Green", "Red", "Brown"),
    ("nature", "What color is snow?", "White", "Black", "Green", "Red"),
    ("nature", "What color is a ripe banana?", "Yellow", "Blue", "Purple", "Black"),
    ("nature", "What falls from clouds when it rains?", "Water", "Sand", "Leaves", "Rocks"),
    ("nature", "In which season does it usually snow?", "Winter", "Summer", "Spring", "Autumn"),
    ("nature", "In which season do many trees lose their leaves?", "Autumn", "Spring", "Summer", "Winter"),
    ("nature", "Which season is usually the hottest?", "Summer", "Winter", "Autumn", "Spring"),
    ("nature", "Where does the Sun rise?", "In the east", "In the west", "In the north", "In the south"),
    ("nature", "Which animal is famous for being very slow?", "The snail", "The cheetah", "The horse", "The rabbit"),
    ("nature", "Which animal is the fastest on land?", "The cheetah", "The turtle", "The snail", "The cow"),
    ("nature", "What do spiders make to catch insects?", "Webs", "Nests", "Dams", "Hives"),
    ("nature", "What do birds build to lay their eggs in?", "Nests", "Webs", "Dams", "Hives"),
    # everyday common sense
    ("common_sense", "What do you use to cut paper?", "Scissors", "A spoon", "A pillow", "A towel"),
    ("common_sense", "What do you use to eat soup?", "A spoon", "A knife", "A hammer", "A pencil"),
    ("common_sense", "What do you use to write on paper?", "A pen", "A fork", "A shoe", "A plate"),
    ("common_sense", "What do you use to dry yourself after a shower?", "A towel", "A fork", "A book", "A lamp"),
    ("common_sense", "What do you wear on your feet?", "Shoes", "Gloves", "Hats", "Scarves"),
    ("common_sense", "What do you wear on your hands to keep them warm?", "Gloves", "Socks", "Shoes", "Belts"),
    ("common_sense", "What do you use to open a locked door?", "A key", "A spoon", "A cup", "A sock"),
    ("common_sense", "Where do you sleep at night?", "In a bed", "In a bathtub", "In a fridge", "In an oven"),
    ("common_sense", "Where do you keep food cold?", "In a refrigerator", "In an oven", "In a closet", "In a mailbox"),
    ("common_sense", "What do you use to cook food with heat?", "A stove", "A refrigerator", "A bookshelf", "A mirror"),
    ("common_sense", "What should you use when it rains to stay dry?", "An umbrella", "Sunglasses", "A fan", "Sandals"),
    ("common_sense", "Where do you go to borrow books?", "A library", "A bakery", "A gas station", "A swimming pool"),
    ("common_sense", "Where do you go to see a doctor when you are sick?", "A hospital", "A cinema", "A bakery", "A stadium"),
    ("common_sense", "Where do children go to learn to read and write?", "School", "A prison", "A factory", "A bank"),
    ("common_sense", "Where can you buy bread?", "At a bakery", "At a library", "At a post office", "At a hospital"),
    ("common_sense", "Who delivers letters to your house?", "A mail carrier", "A pilot", "A dentist", "A chef"),
    ("common_sense", "Who puts out fires?", "Firefighters", "Teachers", "Bakers", "Painters"),
    ("common_sense", "Who flies an airplane?", "A pilot", "A farmer", "A baker", "A librarian"),
    ("common_sense", "Who takes care of your teeth?", "A dentist", "A pilot", "A plumber", "A farmer"),
    ("common_sense", "Who cooks food in a restaurant?", "A chef", "A pilot", "A dentist", "A lawyer"),
    ("common_sense", "What do you do when you are tired?", "Sleep", "Run a race", "Climb a mountain", "Lift weights"),
    ("common_sense", "What do you do when you are hungry?", "Eat", "Sleep", "Swim", "Sing"),
    ("common_sense", "What do you do when you are thirsty?", "Drink water", "Eat salt", "Run", "Read a book"),
    ("common_sense", "What do you need to see in a dark room?", "A light", "A spoon", "A pillow", "A blanket"),
    ("common_sense", "What does a traffic light show when cars must stop?", "Red", "Green", "Blue", "Purple"),
    ("common_sense", "What does a traffic light show when cars may go?", "Green", "Red", "Purple", "Black"),
    ("common_sense", "What do you use to call someone who is far away?", "A phone", "A spoon", "A chair", "A pillow"),
    ("common_sense", "Which of these is the heaviest?", "A car", "A feather", "A leaf", "A sheet of paper"),
    ("common_sense", "Which of these is the hottest?", "Fire", "Ice", "Snow", "Cold water"),
    ("common_sense", "What happens to ice when it gets warm?", "It melts", "It grows", "It burns", "It sings"),
    ("common_sense", "What do you use to brush your teeth?", "A toothbrush", "A hairbrush", "A paintbrush", "A broom"),
    ("common_sense", "What do you put on a letter before mailing it?", "A stamp", "A feather", "A banana", "A coin"),
    ("common_sense", "What do you use to clean the floor?", "A broom", "A fork", "A pillow", "A candle"),
    ("common_sense", "What do you use to tell the time?", "A clock", "A spoon", "A shoe", "A sock"),
    ("common_sense", "What do people use to travel across the ocean?", "A ship", "A bicycle", "A skateboard", "A car"),
    ("common_sense", "What do you wear to protect your eyes from bright sun?", "Sunglasses", "Gloves", "Boots", "Earmuffs"),
    ("common_sense", "Where would you go to swim?", "A swimming pool", "A library", "A desert", "A bakery"),
    ("common_sense", "What do you use to unlock a car door?", "A car key", "A spoon", "A toothbrush", "A comb"),
    # time and calendar (recall, no calculation)
    ("time", "How many days are in a week?", "Seven", "Five", "Ten", "Twelve"),
    ("time", "How many months are in a year?", "Twelve", "Ten", "Seven", "Twenty"),
    ("time", "How many hours are in a day?", "Twenty-four", "Twelve", "Sixty", "Ten"),
    ("time", "How many minutes are in an hour?", "Sixty", "Twelve", "Twenty-four", "One hundred"),
    ("time", "Which day comes after Monday?", "Tuesday", "Sunday", "Friday", "Saturday"),
    ("time", "Which day comes before Saturday?", "Friday", "Monday", "Sunday", "Wednesday"),
    ("time", "Which month comes after January?", "February", "March", "December", "June"),
    ("time", "What is the last month of the year?", "December", "January", "June", "March"),
    ("time", "What is the first month of the year?", "January", "December", "July", "October"),
    ("time", "When do people usually eat breakfast?", "In the morning", "At midnight", "In the evening", "In the afternoon"),
    # language
    ("language", "What is the opposite of hot?", "Cold", "Warm", "Spicy", "Bright"),
    ("language", "What is the opposite of big?", "Small", "Tall", "Wide", "Heavy"),
    ("language", "What is the opposite of up?", "Down", "Over", "High", "Above"),
    ("language", "What is the opposite of happy?", "Sad", "Glad", "Joyful", "Cheerful"),
    ("language", "What is the opposite of day?", "Night", "Noon", "Morning", "Sunshine"),
    ("language", "What is the opposite of fast?", "Slow", "Quick", "Rapid", "Speedy"),
    ("language", "What is the opposite of open?", "Closed", "Wide", "Empty", "Clear"),
    ("language", "What is the opposite of old?", "Young", "Ancient", "Aged", "Elderly"),
    ("language", "What is the plural of \"child\"?", "Children", "Childs", "Childes", "Childrens"),
    ("language", "What is the plural of \"mouse\"?", "Mice", "Mouses", "Meese", "Mousen"),
    ("language", "Which word is a color?", "Purple", "Table", "Running", "Quickly"),
    ("language", "Which word is an animal?", "Tiger", "Chair", "Window", "Blue"),
    ("language", "Which word is a fruit?", "Apple", "Carrot", "Bread", "Cheese"),
    ("language", "Which word is a vegetable?", "Carrot", "Apple", "Banana", "Cherry"),
    # history and culture (very well known)
    ("culture", "Who wrote the play Romeo and Juliet?", "William Shakespeare", "Charles Dickens", "Mark Twain", "Jane Austen"),
    ("culture", "Who painted the Mona Lisa?", "Leonardo da Vinci", "Vincent van Gogh", "Pablo Picasso", "Claude Monet"),
    ("culture", "Who was the first president of the United States?", "George Washington", "Abraham Lincoln", "Thomas Edison", "Napoleon Bonaparte"),
    ("culture", "Who developed the theory of relativity?", "Albert Einstein", "Isaac Newton", "Charles Darwin", "Galileo Galilei"),
    ("culture", "Who proposed the theory of evolution by natural selection?", "Charles Darwin", "Albert Einstein", "Isaac Newton", "Thomas Edison"),
    ("culture", "Who was the first person to walk on the Moon?", "Neil Armstrong", "Yuri Gagarin", "Albert Einstein", "Christopher Columbus"),
    ("culture", "Which sport is played at Wimbledon?", "Tennis", "Football", "Basketball", "Golf"),
    ("culture", "In which sport do players score a touchdown?", "American football", "Tennis", "Golf", "Swimming"),
    ("culture", "How many players are on a soccer team on the field?", "Eleven", "Five", "Two", "Twenty"),
    ("culture", "What instrument has black and white keys?", "The piano", "The drum", "The trumpet", "The flute"),
    ("culture", "Which holiday is celebrated on December 25?", "Christmas", "Halloween", "Easter", "Thanksgiving"),
    ("culture", "Which holiday is known for costumes and trick-or-treating?", "Halloween", "Christmas", "New Year", "Easter"),
]
# fmt: on


def main() -> None:
    rng = random.Random(SEED)
    questions = [item[1] for item in ITEMS]
    duplicates = {q for q in questions if questions.count(q) > 1}
    if duplicates:
        raise ValueError(f"duplicate questions: {sorted(duplicates)}")
    with OUT.open("w", encoding="utf-8") as fh:
        for idx, (category, question, answer, *wrong) in enumerate(ITEMS):
            choices = [answer, *wrong]
            rng.shuffle(choices)
            row = {
                "id": f"gmc-{idx:03d}",
                "category": category,
                "question": question,
                "choices": choices,
                "label": choices.index(answer),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(ITEMS)} items to {OUT}")


if __name__ == "__main__":
    main()
