//! An RTB-like workload: OpenRTB-style JSON bid requests (1.5-2 KB: the same keys every time,
//! values drawn from realistic small vocabularies plus unique IDs) and bid responses (about
//! 600 B), generated deterministically so every run and every codec sees the same traffic.
//! Shared by `ferry-bench`'s `compress` scenario and `ferry-tunnel`'s compression benchmark,
//! which is why it lives here rather than in either.

/// A deterministic generator (xorshift) so every configuration sees the same traffic.
pub struct Gen(pub u64);

impl Gen {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // Not an iterator: it never ends.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// One of `items`, chosen at random.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    /// `len` random lower-case hex digits.
    pub fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit((self.next() % 16) as u32, 16).unwrap_or('0'))
            .collect()
    }
}

const BUNDLES: &[&str] = &[
    "com.example.puzzlequest",
    "com.example.citybuilder",
    "com.example.newsreader",
    "com.example.fitnesspal",
    "com.example.racinggame",
    "com.example.weathernow",
];
const UAS: &[&str] = &[
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 12; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/117.0.0.0 Mobile Safari/537.36",
];
const COUNTRIES: &[&str] = &["USA", "DEU", "FRA", "GBR", "BRA", "IND", "JPN"];
const SIZES: &[&str] = &["320,50", "300,250", "728,90", "320,480"];
const CATS: &[&str] = &["IAB1", "IAB9", "IAB9-30", "IAB17", "IAB19"];

/// One bid request: about 1.5-2 KB of JSON whose `id` is 32 hex digits at bytes 7..39.
pub fn bid_request(g: &mut Gen) -> Vec<u8> {
    let size = g.pick(SIZES);
    let (w, h) = size.split_once(',').unwrap_or(("320", "50"));
    format!(
        concat!(
            r#"{{"id":"{id}","imp":[{{"id":"1","banner":{{"w":{w},"h":{h},"pos":1,"btype":[4],"battr":[14],"api":[3,5],"format":[{{"w":{w},"h":{h}}}]}},"#,
            r#""instl":0,"tagid":"slot-{tag}","bidfloor":0.{floor},"bidfloorcur":"USD","secure":1,"exp":300,"#,
            r#""ext":{{"skadn":{{"version":"2.0","sourceapp":"{appid}","skadnetids":["cstr6suwn9.skadnetwork","4fzdc2evr5.skadnetwork","2fnua5tdw4.skadnetwork","ydx93a7ass.skadnetwork","p78axxw29g.skadnetwork","v72qych5uu.skadnetwork","c6k4g5qg8m.skadnetwork","s39g8k73mm.skadnetwork"]}},"#,
            r#""gpid":"/1234/{bundle}/slot-{tag}","data":{{"pbadslot":"/1234/{bundle}/slot-{tag}"}}}}}}],"#,
            r#""app":{{"id":"app-{appid}","name":"{bundle}","bundle":"{bundle}","storeurl":"https://play.google.com/store/apps/details?id={bundle}","#,
            r#""cat":["{cat}"],"ver":"4.{minor}.0","publisher":{{"id":"pub-{pubid}","name":"Example Publisher"}},"content":{{"language":"en"}}}},"#,
            r#""device":{{"ua":"{ua}","geo":{{"lat":{lat}.{latf},"lon":{lon}.{lonf},"type":2,"country":"{country}","region":"CA","city":"Example City","zip":"9{zip}"}},"#,
            r#""dnt":0,"lmt":0,"ip":"{ip1}.{ip2}.{ip3}.{ip4}","devicetype":4,"make":"Google","model":"Pixel 7","os":"Android","osv":"13","#,
            r#""h":2400,"w":1080,"ppi":420,"pxratio":2.625,"js":1,"language":"en","carrier":"Example Mobile","connectiontype":6,"ifa":"{ifa}"}},"#,
            r#""user":{{"id":"{user}","buyeruid":"{buyer}","yob":19{yob},"gender":"O","ext":{{"consent":"{consent}"}}}},"#,
            r#""at":1,"tmax":120,"cur":["USD"],"bcat":["IAB25","IAB26","IAB7-39","IAB8-18"],"badv":["example-competitor.com"],"#,
            r#""source":{{"fd":1,"tid":"{tid}","ext":{{"schain":{{"complete":1,"nodes":[{{"asi":"exchange.example","sid":"{sid}","hp":1}}],"ver":"1.0"}}}}}},"#,
            r#""regs":{{"coppa":0,"ext":{{"gdpr":0,"us_privacy":"1YNN"}}}}}}"#
        ),
        id = g.hex(32),
        w = w,
        h = h,
        tag = g.next() % 400,
        floor = g.next() % 100,
        appid = g.next() % 50,
        bundle = g.pick(BUNDLES),
        cat = g.pick(CATS),
        minor = g.next() % 20,
        pubid = g.next() % 30,
        ua = g.pick(UAS),
        lat = g.next() % 90,
        latf = g.next() % 10000,
        lon = g.next() % 180,
        lonf = g.next() % 10000,
        country = g.pick(COUNTRIES),
        zip = g.next() % 10000,
        ip1 = g.next() % 223 + 1,
        ip2 = g.next() % 256,
        ip3 = g.next() % 256,
        ip4 = g.next() % 256,
        ifa = g.hex(32),
        user = g.hex(24),
        buyer = g.hex(16),
        yob = 50 + g.next() % 50,
        consent = g.hex(40),
        tid = g.hex(32),
        sid = g.next() % 1000,
    )
    .into_bytes()
}

/// The bid response to the request `request_id` (its bytes, as [`bid_request`] made them).
pub fn bid_response(g: &mut Gen, request_id: &[u8]) -> Vec<u8> {
    let id = String::from_utf8_lossy(&request_id[7..39]).into_owned();
    format!(
        concat!(
            r#"{{"id":"{id}","bidid":"{bidid}","cur":"USD","seatbid":[{{"seat":"seat-{seat}","bid":[{{"id":"1","impid":"1","price":{price}.{cents},"#,
            r#""adid":"ad-{ad}","crid":"creative-{cr}","adomain":["advertiser-{adv}.example"],"cat":["IAB9"],"w":320,"h":50,"#,
            r#""nurl":"https://win.example/notify?id={id}&price=${{AUCTION_PRICE}}","#,
            r#""adm":"<div class=\"ad\"><a href=\"https://click.example/c?cr={cr}\"><img src=\"https://cdn.example/img/{cr}.png\" width=\"320\" height=\"50\"></a><img src=\"https://track.example/i?id={id}\" width=\"1\" height=\"1\"></div>"}}]}}]}}"#
        ),
        id = id,
        bidid = g.hex(16),
        seat = g.next() % 8,
        price = g.next() % 5,
        cents = g.next() % 100,
        ad = g.next() % 300,
        cr = g.next() % 300,
        adv = g.next() % 40,
    )
    .into_bytes()
}

/// `exchanges` bid requests and the responses to them, each a sample of its own, from a
/// generator seeded with `seed`: what a compression dictionary for this traffic is trained on
/// (with a seed other than the measured run's, so it learns the format, not the messages).
pub fn training_samples(seed: u64, exchanges: usize) -> Vec<Vec<u8>> {
    let mut g = Gen(seed);
    let mut samples = Vec::with_capacity(2 * exchanges);
    for _ in 0..exchanges {
        let request = bid_request(&mut g);
        let response = bid_response(&mut g, &request);
        samples.push(request);
        samples.push(response);
    }
    samples
}
