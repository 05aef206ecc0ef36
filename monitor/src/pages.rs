//! The HTML views and the dashboard. Everything is self-contained (no CDN: monitors run where
//! there is no internet); the dashboard polls `/stats?format=json` every second.

use crate::metrics::{buckets, LOSS_BUCKETS, RTT_BUCKETS};
use crate::snapshot::Snapshot;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}</style></head><body><h1>{t}</h1>{body}\
         <p><a href=\"/\">dashboard</a> · <a href=\"/stats\">stats</a> · \
         <a href=\"/connections\">connections</a> · <a href=\"/stats-history\">history</a> · \
         <a href=\"/metrics\">metrics</a></p></body></html>",
        t = esc(title)
    )
}

fn rows(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut out = String::from("<table><tr>");
    for h in headers {
        out += &format!("<th>{}</th>", esc(h));
    }
    out += "</tr>";
    for r in rows {
        out += "<tr>";
        for c in r {
            out += &format!("<td>{}</td>", esc(&c));
        }
        out += "</tr>";
    }
    out + "</table>"
}

/// `/stats` as JSON: totals and the two distributions of active sessions.
pub fn stats_json(s: &Snapshot) -> serde_json::Value {
    let rtts: Vec<f64> = s.sessions.iter().map(|x| x.rtt_seconds).collect();
    let losses: Vec<f64> = s.sessions.iter().map(|x| x.loss_rate).collect();
    let dist = |values: &[f64], bounds: &[f64]| {
        let (_, per_bucket) = buckets(values, bounds);
        per_bucket
            .iter()
            .map(|(le, n)| {
                let le = if le.is_finite() {
                    serde_json::json!(le)
                } else {
                    serde_json::json!("+Inf")
                };
                serde_json::json!({"le": le, "count": n})
            })
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "role": s.role,
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "ready": s.ready,
        "totals": s.totals,
        "rtt_distribution_active": dist(&rtts, &RTT_BUCKETS),
        "loss_rate_distribution_active": dist(&losses, &LOSS_BUCKETS),
        "backends": s.backends,
        "config": s.config,
    })
}

/// `/stats` as HTML.
pub fn stats_html(s: &Snapshot) -> String {
    let t = &s.totals;
    let mut table = vec![
        vec!["sessions active".into(), t.sessions_active.to_string()],
        vec!["sessions total".into(), t.sessions_total.to_string()],
        vec!["streams active".into(), t.streams_active.to_string()],
        vec!["streams total".into(), t.streams_total.to_string()],
        vec![
            "payload bytes out / in".into(),
            format!("{} / {}", t.payload_bytes_out, t.payload_bytes_in),
        ],
        vec![
            "wire bytes out / in".into(),
            format!("{} / {}", t.wire_bytes_out, t.wire_bytes_in),
        ],
        vec![
            "packets sent / lost".into(),
            format!("{} / {}", t.packets_sent, t.packets_lost),
        ],
        vec![
            "FEC repairs sent / packets rebuilt / overhead".into(),
            format!(
                "{} / {} / {:.1}%",
                t.fec.repair_packets_sent,
                t.fec.packets_recovered,
                100.0 * t.fec.repair_bytes_sent as f64 / t.wire_bytes_out.max(1) as f64
            ),
        ],
        vec![
            "malformed / unauthenticated dropped".into(),
            format!("{} / {}", t.malformed_dropped, t.unauthenticated_dropped),
        ],
        vec![
            "for no known session, dropped".into(),
            t.unknown_session_dropped.to_string(),
        ],
    ];
    for (reason, n) in &t.rejected {
        table.push(vec![format!("rejected: {reason}"), n.to_string()]);
    }
    for (event, n) in &t.stateless_resets {
        table.push(vec![format!("stateless resets {event}"), n.to_string()]);
    }
    let u = &t.udp;
    table.push(vec![
        "UDP flows active / total".into(),
        format!("{} / {}", u.flows_active, u.flows_total),
    ]);
    table.push(vec![
        "UDP datagrams in / out".into(),
        format!("{} / {}", u.datagrams_in, u.datagrams_out),
    ]);
    table.push(vec![
        "UDP copies sent / duplicates suppressed".into(),
        format!("{} / {}", u.copies_sent, u.duplicates_suppressed),
    ]);
    for (reason, n) in u.dropped.iter().chain(&u.refused) {
        table.push(vec![
            format!("UDP dropped or refused: {reason}"),
            n.to_string(),
        ]);
    }
    let stats = stats_json(s);
    let dist = |key: &str| {
        stats[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| vec![format!("<= {}", b["le"]), b["count"].to_string()])
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    page(
        &format!("{} stats", s.role),
        &format!(
            "{}<h2>RTT of active sessions (seconds)</h2>{}<h2>Loss rate of active sessions</h2>{}",
            rows(&["figure", "value"], table),
            rows(&["bucket", "sessions"], dist("rtt_distribution_active")),
            rows(
                &["bucket", "sessions"],
                dist("loss_rate_distribution_active")
            ),
        ),
    )
}

/// `/connections` as HTML.
pub fn connections_html(s: &Snapshot) -> String {
    let sessions = s
        .sessions
        .iter()
        .map(|x| {
            vec![
                x.peer.clone(),
                format!("{:.1}", x.rtt_seconds * 1000.0),
                format!("{:.2}%", x.loss_rate * 100.0),
                x.streams.to_string(),
                format!("{} / {}", x.payload_bytes_out, x.payload_bytes_in),
                format!("{} / {}", x.wire_bytes_out, x.wire_bytes_in),
                format!("{:.0}", x.age_seconds),
                x.datagram_size.to_string(),
            ]
        })
        .collect();
    let backends = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.service.clone(),
                b.address.clone(),
                b.state.clone(),
                b.active_streams.to_string(),
                b.latency_seconds
                    .map_or("-".into(), |l| format!("{:.1}", l * 1000.0)),
            ]
        })
        .collect();
    page(
        &format!("{} connections", s.role),
        &format!(
            "<h2>Sessions</h2>{}<h2>Backends</h2>{}",
            rows(
                &[
                    "peer",
                    "RTT ms",
                    "loss",
                    "streams",
                    "payload out / in",
                    "wire out / in",
                    "age s",
                    "packet bytes"
                ],
                sessions
            ),
            rows(
                &["service", "address", "state", "streams", "latency ms"],
                backends
            ),
        ),
    )
}

/// `/stats-history` as HTML.
pub fn history_html(s: &Snapshot) -> String {
    let closed = s
        .history
        .iter()
        .map(|c| {
            vec![
                c.peer.clone(),
                c.reason.clone(),
                format!("{:.1}", c.duration_seconds),
                c.payload_bytes.to_string(),
                c.wire_bytes.to_string(),
                format!("{:.1}", c.rtt_seconds * 1000.0),
            ]
        })
        .collect();
    page(
        &format!("{} closed sessions", s.role),
        &rows(
            &[
                "peer",
                "why it closed",
                "lasted s",
                "payload bytes",
                "wire bytes",
                "RTT ms",
            ],
            closed,
        ),
    )
}

/// The dashboard: live totals, throughput, compression saving, RTT and loss histograms of
/// active sessions, backends. Polls `/stats?format=json` every second.
pub const DASHBOARD: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>Ferry monitor</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#1d2733;background:#f7f9fb}
h1{font-size:20px;margin:0 0 .6em} h2{font-size:15px;margin:1.2em 0 .4em}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:8px 12px;min-width:140px}
.card b{display:block;font-size:20px} .card span{color:#5b6b7c;font-size:12px}
.card b span{color:inherit;font-size:inherit}
.charts{display:flex;flex-wrap:wrap;gap:20px}
svg{background:#fff;border:1px solid #dde3ea;border-radius:6px}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #dde3ea;padding:3px 8px}
.UP{color:#17803d} .DOWN{color:#b42318}
</style></head><body>
<h1>Ferry <span id="role"></span> <small id="version"></small></h1>
<div class="cards" id="cards"></div>
<h2>The last <select id="range"><option value="fine">10 minutes</option><option value="coarse">hour</option></select></h2>
<div class="charts" id="history">
 <div><h2>Throughput out / in</h2><svg id="h-throughput" width="420" height="150"></svg></div>
 <div><h2>RTT p50 / p99</h2><svg id="h-rtt" width="420" height="150"></svg></div>
 <div><h2>Loss rate / bytes sent again</h2><svg id="h-loss" width="420" height="150"></svg></div>
 <div><h2>Sessions / streams / refusals per second</h2><svg id="h-load" width="420" height="150"></svg></div>
</div>
<div class="charts">
 <div><h2>RTT of active sessions</h2><svg id="rtt" width="420" height="180"></svg></div>
 <div><h2>Loss rate of active sessions</h2><svg id="loss" width="420" height="180"></svg></div>
</div>
<h2>Backends</h2><table id="backends"></table>
<p><a href="/stats">stats</a> · <a href="/connections">connections</a> · <a href="/stats-history">history</a> · <a href="/metrics">metrics</a> · updated <span id="updated">never</span></p>
<script>
function fmtBytes(n){const u=['B','KiB','MiB','GiB','TiB'];let i=0;while(n>=1024&&i<4){n/=1024;i++}return n.toFixed(i?1:0)+' '+u[i]}
function esc(t){return String(t).replace(/[&<>"']/g,c=>'&#'+c.charCodeAt(0)+';')}
function card(label,value){return '<div class="card"><b>'+value+'</b><span>'+label+'</span></div>'}
function bars(id,dist,fmt){
  const svg=document.getElementById(id),w=420,h=180,n=dist.length,bw=(w-20)/n;
  const max=Math.max(1,...dist.map(b=>b.count));let s='';
  dist.forEach((b,i)=>{const bh=(h-40)*b.count/max,x=10+i*bw,y=h-25-bh;
    s+='<rect class="bar" data-count="'+b.count+'" x="'+(x+2)+'" y="'+y+'" width="'+(bw-4)+'" height="'+bh+'" fill="#2f6fb0"></rect>';
    s+='<text x="'+(x+bw/2)+'" y="'+(h-10)+'" font-size="10" text-anchor="middle">'+fmt(b.le)+'</text>';
    if(b.count>0)s+='<text x="'+(x+bw/2)+'" y="'+(y-3)+'" font-size="10" text-anchor="middle">'+b.count+'</text>';});
  svg.innerHTML=s;
}
const COLORS=['#2f6fb0','#d9822b','#17803d'];
function lines(id,points,series,shared){
  const svg=document.getElementById(id),w=420,h=150,l=8,r=8,top=18,bottom=18;
  if(points.length<2){svg.innerHTML='<text x="10" y="80" font-size="11" fill="#5b6b7c">collecting…</text>';return}
  const t0=points[0].t,t1=points[points.length-1].t,span=Math.max(1,t1-t0);
  let s='';const all=Math.max(...series.flatMap(([key])=>points.map(p=>p[key])));
  series.forEach(([key,label,fmt],k)=>{
    const vals=points.map(p=>p[key]),max=Math.max(...vals),top_=shared?all:max,scale=top_>0?top_:1;
    const pts=points.map(p=>(l+(p.t-t0)/span*(w-l-r)).toFixed(1)+','+(h-bottom-(p[key]/scale)*(h-top-bottom)).toFixed(1)).join(' ');
    s+='<polyline class="series" data-key="'+key+'" data-max="'+max+'" fill="none" stroke="'+COLORS[k]+'" stroke-width="1.5" points="'+pts+'"></polyline>';
    s+='<text x="'+(l+k*140)+'" y="12" font-size="10" fill="'+COLORS[k]+'">'+label+' max '+fmt(max)+'</text>';
  });
  s+='<text x="'+l+'" y="'+(h-4)+'" font-size="10" fill="#5b6b7c">'+Math.round(span)+' s</text>';
  svg.innerHTML=s;
}
async function refreshHistory(){
  try{
    const r=await fetch('/history',{cache:'no-store'});const hist=await r.json();
    const pts=hist[document.getElementById('range').value].points;
    const bps=v=>fmtBytes(v)+'/s',ms=v=>v.toFixed(1)+' ms',n=v=>v.toFixed(v<10?1:0);
    const pct=v=>(v*100).toFixed(2)+'%';
    lines('h-throughput',pts,[['bytes_out_per_second','out',bps],['bytes_in_per_second','in',bps]],true);
    lines('h-rtt',pts,[['rtt_p50_ms','p50',ms],['rtt_p99_ms','p99',ms]],true);
    lines('h-loss',pts,[['loss_rate','loss',pct],['retransmitted_bytes_per_second','resent',bps]]);
    lines('h-load',pts,[['sessions','sessions',n],['streams','streams',n],['refusals_per_second','refused/s',n]]);
  }catch(e){}
}
async function refresh(){
  try{
    const r=await fetch('/stats?format=json',{cache:'no-store'});const s=await r.json();const t=s.totals;
    document.getElementById('role').textContent=s.role;document.getElementById('version').textContent=s.version;
    const rate=fmtBytes(s.payload_bytes_per_second||0)+'/s';
    const payload=t.payload_bytes_out+t.payload_bytes_in,stream=t.stream_bytes_out+t.stream_bytes_in;
    const saving=payload>0?((1-stream/payload)*100).toFixed(1)+'%':'-';
    let c=card('ready',s.ready?'yes':'no')+card('sessions active',t.sessions_active)+card('sessions total',t.sessions_total)
      +card('streams active',t.streams_active)+card('streams total','<span id="streams-total">'+t.streams_total+'</span>')
      +card('throughput (payload)',rate)+card('payload out / in',fmtBytes(t.payload_bytes_out)+' / '+fmtBytes(t.payload_bytes_in))
      +card('wire out / in',fmtBytes(t.wire_bytes_out)+' / '+fmtBytes(t.wire_bytes_in))+card('compression saving',saving)
      +card('packets lost / sent',t.packets_lost+' / '+t.packets_sent)+card('dropped (malformed / forged)',t.malformed_dropped+' / '+t.unauthenticated_dropped);
    (t.rejected||[]).forEach(([k,v])=>{c+=card('rejected: '+k,v)});
    const cf=s.config;if(cf){
      c+=card('configuration loaded','<span id="config-loaded">'+(cf.last_load_unix_seconds>0?new Date(cf.last_load_unix_seconds*1000).toLocaleString():'-')+'</span>')
        +card('last reload (ok / failed: '+cf.reloads_ok+' / '+cf.reloads_failed+')','<span id="config-last-reload" title="'+esc(cf.last_reload||'')+'">'+(cf.last_reload==null?'none':(cf.last_reload==='ok'?'ok':'failed'))+'</span>');
    }
    const u=t.udp;if(u&&(u.flows_total>0)){
      c+=card('UDP flows active / total',u.flows_active+' / '+u.flows_total)+card('UDP datagrams in / out',u.datagrams_in+' / '+u.datagrams_out)
        +card('UDP copies / duplicates dropped',u.copies_sent+' / '+u.duplicates_suppressed)+card('UDP largest unfragmented',u.unfragmented_max+' B');
      (u.dropped||[]).forEach(([k,v])=>{if(v>0)c+=card('UDP dropped: '+k,v)});
    }
    document.getElementById('cards').innerHTML=c;
    bars('rtt',s.rtt_distribution_active,le=>le==='+Inf'?'more':(le>=1?le+'s':(le*1000)+'ms'));
    bars('loss',s.loss_rate_distribution_active,le=>le==='+Inf'?'more':(le*100)+'%');
    let b='<tr><th>service</th><th>address</th><th>state</th><th>streams</th><th>latency</th></tr>';
    s.backends.forEach(x=>{b+='<tr><td>'+(x.service||'default')+'</td><td>'+x.address+'</td><td class="'+x.state+'">'+x.state+'</td><td>'+x.active_streams+'</td><td>'+(x.latency_seconds==null?'-':(x.latency_seconds*1000).toFixed(1)+' ms')+'</td></tr>'});
    document.getElementById('backends').innerHTML=b;
    document.getElementById('updated').textContent=new Date().toLocaleTimeString();
  }catch(e){document.getElementById('updated').textContent='error: '+e}
}
refresh();setInterval(refresh,1000);
refreshHistory();setInterval(refreshHistory,2000);document.getElementById('range').onchange=refreshHistory;
</script></body></html>
"##;
